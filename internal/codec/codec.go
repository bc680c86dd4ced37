// Package codec decodes the JSON that Lanyard's hot paths read: the records
// its stores wrote (internal/bolt, internal/etcd) and the bodies of API
// requests (broker/redeem). It is the one home of
// github.com/go-json-experiment/json, the implementation of Go's
// encoding/json/v2 (in the standard library only behind GOEXPERIMENT=jsonv2
// in the Go release we build with; when it ships by default, this package
// switches its import and nothing else changes).
//
// Two reasons to decode with it rather than encoding/json:
//
//   - speed: a grant record decodes 2.5× faster with a third of the
//     allocations (BenchmarkDecode), and record decoding was the largest
//     share of a redemption's CPU (BENCHMARKS.md);
//   - strictness: it rejects duplicate member names and invalid UTF-8,
//     which encoding/json accepts (the last duplicate wins), so two parsers
//     reading the same body cannot see different requests.
//
// Encoding stays with encoding/json: the stored format, and the audit
// chain's hashes over it, do not change. Records written by encoding/json
// decode here to the same values (TestDecodeMatchesEncodingJSON).
//
// Memo goes one step further for records read far more often than they
// change: it skips the decode when the stored bytes are the ones it last
// decoded.
package codec

import json "github.com/go-json-experiment/json"

// Decode decodes one JSON value from data into v, as stored by
// encoding/json.Marshal. Unknown members are ignored (a record written by a
// newer Lanyard still reads); duplicate members, invalid UTF-8 and trailing
// data are errors.
func Decode(data []byte, v any) error {
	return json.Unmarshal(data, v)
}

// DecodeStrict is Decode for untrusted request bodies: a member v does not
// declare is an error too.
func DecodeStrict(data []byte, v any) error {
	return json.Unmarshal(data, v, json.RejectUnknownMembers(true))
}
