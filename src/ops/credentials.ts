/** Credentials as the CLI passes them (`USER:PASSWORD`); re-exported so the CLI stays on ops/. */
export { parseCredentials, type Credentials } from '../transports/registry/credentials.js';
