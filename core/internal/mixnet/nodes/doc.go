// Package nodes holds a mix node's keys and the signed descriptors of the
// mixnet: the long-term Ed25519 identity key, the X25519 (or X-Wing, for
// the KEM Sphinx format) mix key of each epoch (created ahead, deleted after its grace period for forward
// secrecy), node descriptors signed by the identity key, and the nodes file
// (nodes.json) that lists the descriptors of the network.
//
// # Files
//
// The key directory (DATA_DIR/keys, mode 0700; like Tor with its data
// directory, an existing one of ours with a wider mode is set to 0700, and
// one owned by another user is refused) holds:
//
//	identity.key   Ed25519 identity key, PKCS#8 PEM ("PRIVATE KEY"), mode 0600
//	mix-<E>.key    X25519 mix key of epoch E (decimal), PKCS#8 PEM with the
//	               PEM headers Epoch, Not-After, Not-Before (RFC 3339,
//	               UTC, whole seconds) and Public-Key (base64), mode 0600;
//	               written and read by sdk/mixkey. The KeyStore reads only
//	               the public half; the mixer plugin reads the private key.
//	.lock          empty; flock(2) serializes every change between processes
//
// A key file readable or writable by group or others, or that is not a
// regular file (a symbolic link), is refused with ErrInsecurePermissions.
// Files are written to a temporary name (0600), synced, and linked to
// their final name, so a key file is either complete or absent and an
// existing identity is never overwritten.
//
// # Epochs
//
// Epoch(t, L) = floor(unix seconds of t / L), L a whole number of seconds.
// The key of epoch E is valid for packets in [start(E), start(E+1) + grace)
// where start(E) = E*L unix seconds. A KeyStore keeps the keys of the
// previous epoch (while in its grace), the current and the next epoch, and
// deletes a key file as soon as its validity ends: the file is overwritten
// with zeros, synced, unlinked, and the directory synced. (On flash or
// copy-on-write file systems overwriting in place is not guaranteed to reach
// the old blocks; the unlink is what the design relies on.)
//
// # Descriptors
//
// A Descriptor is JSON (see the type). Its two kinds of signature are
// Ed25519 (RFC 8032) by the identity key over these binary encodings, in
// which u32, u64 and i64 are big-endian, str is a u32 length followed by
// that many bytes, times are unix seconds (i64) and the fixed-size fields
// are raw bytes:
//
//	mix key signature over:
//	  "mixmta mix key v1" 0x00
//	  node id (32 B) | epoch (u64) | X25519 public key (32 B)
//	  not_before (i64) | not_after (i64)
//
//	descriptor signature over:
//	  "mixmta node descriptor v1" 0x00
//	  version (u32) | node id (32 B) | identity public key (32 B)
//	  name (str) | mix_address (str) | onion_address (str, "" if none)
//	  number of capabilities (u32) | each capability (str), in JSON order
//	  published (i64)
//	  number of mix keys (u32) | for each, in JSON order:
//	    epoch (u64) | public key (32 B) | not_before (i64) | not_after (i64)
//	    | mix key signature (64 B)
//
// A descriptor of the KEM format (sphinx_format "xwing") signs the same
// encodings with the contexts "mixmta mix key xwing v1" 0x00 and "mixmta
// node descriptor xwing v1" 0x00, and its public keys are 1216-byte X-Wing
// keys: a descriptor of one format never verifies as the other. A nodes
// file states its format ({"sphinx_format": "xwing", "nodes": [...]},
// absent for X25519) and refuses a descriptor of the other
// (ErrWrongFormat), as a KeyStore refuses key files of the other.
//
// The context strings keep these signatures apart from each other and from
// the TLS 1.3 CertificateVerify signatures the same identity key makes in
// the mix transport (those start with 64 spaces). Every field of the JSON
// except "signature" is covered; JSON times must be whole seconds so that
// no part of a time is left unsigned. The node id is SHA-256 of the
// identity public key (sdk.NodeID).
//
// # Verification and the nodes file
//
// Verify sorts a bad descriptor into one of the kinds ErrMalformed (does
// not decode, bad sizes or syntax), ErrForged (a signature does not verify:
// the descriptor was changed after its node signed it), ErrMismatched (the
// node signed something inconsistent: an id that is not the hash of its
// identity key, a mix key signed by another identity, two keys for one
// epoch, a key shared with another node) and ErrExpired (no mix key valid
// now or later). LoadNodes refuses the whole nodes file if any descriptor
// is malformed, forged, mismatched or duplicated (a name or an identity
// listed twice): a bad entry in the operator's own file is a serious
// problem, and starting with part of the network silently missing would
// hide it. An expired descriptor is routine (a node that went away or has
// not been refreshed): LoadNodes leaves it out of the Directory and reports
// it in Directory.Skipped. A descriptor has no age limit of its own: it
// expires with its last mix key, that is at most two epochs plus the grace
// after it was exported (current and next key), so every node's descriptor
// must be re-exported and redistributed at least once per epoch.
package nodes
