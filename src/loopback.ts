/**
 * Whether a host names this machine's loopback: `localhost` (and `*.localhost`, which resolvers
 * answer with loopback), 127.0.0.0/8, and ::1 in any of its spellings (`0:0:0:0:0:0:0:1`), or
 * an IPv4 loopback address mapped into IPv6 (`::ffff:127.0.0.1`). Loopback is where a registry
 * may be asked over plain HTTP without being named insecure, and where no proxy is used.
 */
import { BlockList, isIP } from 'node:net';

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/** `host`: a host name or address, in brackets or not, without a port. */
export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, '$1');
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  const family = isIP(h);
  return family !== 0 && LOOPBACK.check(h, family === 6 ? 'ipv6' : 'ipv4');
}
