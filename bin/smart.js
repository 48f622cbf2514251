#!/bin/sh
':' //; export GLIBC_TUNABLES="${GLIBC_TUNABLES-glibc.malloc.hugetlb=1}"; case "${NODE_OPTIONS-}" in *-ca*) ;; *) [ -z "${NODE_EXTRA_CA_CERTS-}" ] || { export SMART_DEFERRED_CA_CERTS="$NODE_EXTRA_CA_CERTS"; unset NODE_EXTRA_CA_CERTS; } ;; esac; exec node "$0" "$@"
// Run as a command, the line above is sh: it starts Node with glibc's malloc on transparent huge
// pages (unless GLIBC_TUNABLES is set already: the user's tunables win; GLIBC_TUNABLES= turns it off).
// Why: Node reads sockets and files into fresh buffers, and on the VMs CI runs on each first touch
// of a 4 KiB page costs ~15 us; huge pages cut the page faults of a 70 MB pull from 17,000 to 7,500
// and of a 190 MB push from 37,000 to 11,000 (10% of the wall time of both). Run by `node` (tests),
// the line is a string and a comment. Musl, and kernels without THP, ignore the tunable.
// It also moves NODE_EXTRA_CA_CERTS aside (SMART_DEFERRED_CA_CERTS), unless NODE_OPTIONS chooses the
// CA store (--use-openssl-ca and the like): Node 20 reads that file and builds its root store
// before any JS runs, 35-50 ms of every command here; the CLI loads it at the first TLS
// connection instead, and gives the variable back to the programs it starts (src/tls-trust.ts).
// CommonJS (bin/package.json), as the chunks it loads are: no ES module loader to start (see
// scripts/bundle-cli.mjs).
const { main } = require('../dist/bundle/main.js');

main(process.argv).then((code) => {
  process.exitCode = code;
  // The work is done: a connection some library still holds open (an abandoned connect to a registry
  // that never answered) must not keep the command alive. A clean run has exited before this fires.
  setTimeout(() => process.exit(code), 200).unref();
});
