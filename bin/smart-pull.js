#!/bin/sh
':' //; export GLIBC_TUNABLES="${GLIBC_TUNABLES-glibc.malloc.hugetlb=1}"; case "${NODE_OPTIONS-}" in *-ca*) ;; *) [ -z "${NODE_EXTRA_CA_CERTS-}" ] || { export SMART_DEFERRED_CA_CERTS="$NODE_EXTRA_CA_CERTS"; unset NODE_EXTRA_CA_CERTS; } ;; esac; exec node "$0" "$@"
// sh, then JS: see smart.js.
// smart-pull ARGS is smart pull ARGS.
const { main } = require('../dist/bundle/main.js');

main([process.argv[0], process.argv[1], 'pull', ...process.argv.slice(2)], 'smart-pull').then((code) => {
  process.exitCode = code;
  setTimeout(() => process.exit(code), 200).unref();
});
