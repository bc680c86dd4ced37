// Package broker holds Lanyard's domain: the records it keeps (users, clients,
// MCP servers, connections, grants and single-use codes), the contracts of
// the metadata store and the secret store, and the error sentinels every
// implementation returns.
//
// It sits at the centre of the module and depends only on the standard
// library. Implementations live in leaf packages named after what they depend
// on (internal/bolt, vault, vault/sealed); only cmd/lanyard wires concrete
// types together. Shared conformance suites for the contracts live in
// broker/storetest and broker/secrettest.
package broker
