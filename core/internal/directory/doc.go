// Package directory is the mixnet's directory: voting directory
// authorities that collect the nodes' signed descriptors, vote, and publish
// one consensus document per epoch signed by each of them, and the client
// side with which every node uploads its descriptor and takes the nodes of
// the network from a consensus signed by a majority of the configured
// authorities. It follows the shape of Katzenpost's voting PKI (vote,
// reveal, sign, publish within an epoch) and Tor's directory protocol
// (dir-spec.txt); docs/directory.md says where it simplifies them.
//
// # Epoch schedule
//
// The consensus for epoch E+1 is made during epoch E (length P):
//
//	[0, P/2)     nodes upload their descriptors; authorities probe them
//	P/2          each authority signs its vote: the descriptors it holds
//	             whose node it reached during E and that carry a key for E+1
//	5P/8         authorities fetch each other's votes and tally them
//	             (as soon as all votes are in, at the latest at 6P/8)
//	6P/8         authorities exchange their signatures over the tally
//	7P/8         nodes fetch the consensus for E+1 and use it from the
//	             start of E+1
//
// # Wire protocol
//
// HTTP/1.1 (the authority's listener; over Tor to its onion service when
// a tor: section is configured). The channel is not trusted: every object
// is signed, descriptors by their node, votes and consensus signatures by
// an authority key configured at every node.
//
//	POST /v1/descriptor          a descriptor (JSON, at most MaxBody)
//	GET  /v1/vote/E              this authority's vote for epoch E
//	GET  /v1/signature/E         its signature over its tally for epoch E
//	GET  /v1/consensus/E         the consensus of E, once a majority signed
//
// # Signatures
//
// Ed25519 (RFC 8032) by the authority key over a context string, 0x00,
// and the SHA-256 of the object's canonical JSON (encoding/json of the
// object with its signatures left out and its times in UTC):
//
//	vote:      "mixmta directory vote v1" 0x00 | SHA-256(vote JSON)
//	consensus: "mixmta directory consensus v1" 0x00 | SHA-256(consensus JSON)
package directory
