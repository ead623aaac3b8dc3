/**
 * The native host protocol's front end (DESIGN.md §2): the server, and the codec it shares with
 * the client library in src/client/. See doc/native-protocol.md.
 */
export * from './protocol.js';
export { type NativeCounters, type NativeLog, NativeServer, type NativeServerOptions } from './server.js';
