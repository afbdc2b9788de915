package nodes

import (
	"bytes"
	"cmp"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/mlkem"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/mixkey"
	"github.com/mixmta/mixmta/sdk/onion"
)

// DescriptorVersion is the only descriptor version this package writes
// and accepts.
const DescriptorVersion = 1

// Limits on a descriptor.
const (
	// MaxNameLen is the longest node name, in bytes. A name is 1 to 64 of
	// A-Z a-z 0-9 . _ - and starts with a letter or digit.
	MaxNameLen = 64
	// MaxCapabilities is the most capabilities a descriptor lists. A
	// capability is 1 to 32 of a-z 0-9 - and starts with a letter.
	MaxCapabilities = 16
	// MaxMixKeys is the most mix keys a descriptor carries.
	MaxMixKeys = 1024
	// MaxClockSkew is how far in the future a descriptor's published time
	// may be (the publisher's clock may run ahead of ours).
	MaxClockSkew = 10 * time.Minute
)

// CapExit is the capability of an exit node: it reassembles messages and
// delivers them.
const CapExit = "exit"

// Descriptor is a node's signed self-description as JSON, what `mixmta node
// export` prints and nodes.json lists. Binary fields are standard base64
// with padding (RFC 4648 §4); times are RFC 3339 in whole seconds. The
// signatures are defined in the package comment.
type Descriptor struct {
	// Version is DescriptorVersion.
	Version int `json:"version"`
	// Name is the operator's name for the node (see MaxNameLen).
	Name string `json:"name"`
	// ID is the node id, 64 lowercase hex digits: SHA-256 of Identity.
	ID string `json:"id"`
	// Identity is the 32-byte Ed25519 identity public key.
	Identity string `json:"identity"`
	// MixAddress is where the mix transport listens, host:port.
	MixAddress string `json:"mix_address"`
	// OnionAddress is an optional v3 onion service of the mix listener,
	// "<56 base32 digits>.onion:port".
	OnionAddress string `json:"onion_address,omitempty"`
	// Capabilities, e.g. "exit" (CapExit).
	Capabilities []string `json:"capabilities"`
	// Published is when the node made the descriptor.
	Published time.Time `json:"published"`
	// SphinxFormat is the packet format the mix keys serve: absent for
	// X25519 (32-byte keys), "xwing" for the KEM format (1216-byte X-Wing
	// keys). It selects the signatures' context strings (package comment),
	// so a descriptor of one format never verifies as the other.
	SphinxFormat string `json:"sphinx_format,omitempty"`
	// MixKeys are the node's mix keys, by epoch.
	MixKeys []MixKey `json:"mix_keys"`
	// Signature is the 64-byte Ed25519 signature of the descriptor.
	Signature string `json:"signature"`
}

// MixKey is one epoch's public mix key in a descriptor (32-byte X25519, or
// 1216-byte X-Wing with sphinx_format xwing), valid for packets in
// [NotBefore, NotAfter).
type MixKey struct {
	Epoch     uint64    `json:"epoch"`
	Public    string    `json:"public"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// Signature is the 64-byte Ed25519 signature of the key by the
	// identity key.
	Signature string `json:"signature"`
}

// NodeInfo is what a node says about itself in its descriptor besides its
// keys: see Descriptor for each field.
type NodeInfo struct {
	Name         string
	MixAddress   string
	OnionAddress string
	Capabilities []string
}

// Node is a verified descriptor, decoded.
type Node struct {
	ID           sdk.NodeID
	Name         string
	Identity     ed25519.PublicKey
	MixAddress   string
	OnionAddress string
	Capabilities []string
	// Exit is true if Capabilities has CapExit.
	Exit      bool
	Published time.Time
	// Format is the Sphinx format of the node's mix keys.
	Format mixkey.Kind
	// Keys are all mix keys of the descriptor, by epoch (Private nil),
	// including any that have expired since.
	Keys       []sdk.EpochKey
	Descriptor *Descriptor
}

// KeysAt returns the keys still valid at now or later (NotAfter > now).
func (n *Node) KeysAt(now time.Time) []sdk.EpochKey {
	var out []sdk.EpochKey
	for _, k := range n.Keys {
		if now.Before(k.NotAfter) {
			k.Public = slices.Clone(k.Public)
			out = append(out, k)
		}
	}
	return out
}

// Export makes this node's descriptor, published at now, with the mix keys
// of keys that are still valid at now (their Private is not used) and
// info. Capabilities are sorted and deduplicated. The result is verified
// before it is returned; errors are those of Verify (for example ErrExpired
// when no key is valid, ErrMalformed for a bad name or address).
func Export(id *Identity, keys []sdk.EpochKey, info NodeInfo, now time.Time) (*Descriptor, error) {
	caps := slices.Clone(info.Capabilities)
	slices.Sort(caps)
	caps = slices.Compact(caps)
	if caps == nil {
		caps = []string{}
	}
	d := &Descriptor{
		Version:      DescriptorVersion,
		Name:         info.Name,
		ID:           id.ID().String(),
		Identity:     b64(id.Public()),
		MixAddress:   info.MixAddress,
		OnionAddress: info.OnionAddress,
		Capabilities: caps,
		Published:    wholeSeconds(now),
	}
	keys = slices.Clone(keys)
	slices.SortFunc(keys, func(a, b sdk.EpochKey) int { return cmp.Compare(a.Epoch, b.Epoch) })
	nodeID := id.ID()
	// The keys' size tells the format: all of one, or an error.
	format := mixkey.X25519Kind
	if len(keys) > 0 && len(keys[0].Public) == mixkey.XWingPublicSize {
		format, d.SphinxFormat = mixkey.XWing, mixkey.XWing.String()
	}
	for _, k := range keys {
		if !now.Before(k.NotAfter) {
			continue
		}
		if want := publicSize(format); len(k.Public) != want {
			return nil, fmt.Errorf("nodes: export: mix key of epoch %d: public key is %d bytes, want %d (%s)", k.Epoch, len(k.Public), want, format)
		}
		mk := MixKey{Epoch: k.Epoch, Public: b64(k.Public), NotBefore: wholeSeconds(k.NotBefore), NotAfter: wholeSeconds(k.NotAfter)}
		msg := mixKeyMessage(format, nodeID, k.Epoch, k.Public, mk.NotBefore.Unix(), mk.NotAfter.Unix())
		mk.Signature = b64(ed25519.Sign(id.priv, msg))
		d.MixKeys = append(d.MixKeys, mk)
	}
	if err := signDescriptor(d, id); err != nil {
		return nil, err
	}
	if _, err := VerifyNode(d, now); err != nil {
		return nil, err
	}
	return d, nil
}

// signDescriptor sets d.Signature by id over d's canonical encoding.
func signDescriptor(d *Descriptor, id *Identity) error {
	dec, err := decode(d, false)
	if err != nil {
		return err
	}
	d.Signature = b64(ed25519.Sign(id.priv, descriptorMessage(d, dec)))
	return nil
}

// ParseDescriptor decodes one descriptor from JSON, strictly: unknown
// fields and trailing data are ErrMalformed. It does not verify it.
func ParseDescriptor(data []byte) (*Descriptor, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var d Descriptor
	if err := dec.Decode(&d); err != nil {
		return nil, &DescriptorError{Name: peekName(data), Kind: ErrMalformed, Detail: err.Error()}
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, &DescriptorError{Name: d.Name, Kind: ErrMalformed, Detail: "data after the descriptor"}
	}
	return &d, nil
}

// peekName is the "name" of a JSON object that does not decode as a
// Descriptor, for the error message.
func peekName(data []byte) string {
	var v struct {
		Name string `json:"name"`
	}
	json.Unmarshal(data, &v)
	return v.Name
}

// Verify checks a descriptor at time now: sizes and syntax (ErrMalformed),
// the descriptor signature and then every mix key signature (ErrForged for
// the first, ErrMismatched for a key not signed by this identity), that
// the id is SHA-256 of the identity key and that no epoch has two keys
// (ErrMismatched), and that at least one mix key is valid at now or later
// (ErrExpired). The error is a *DescriptorError.
func Verify(d *Descriptor, now time.Time) error {
	_, err := VerifyNode(d, now)
	return err
}

// VerifyNode is Verify, returning the decoded node. When the only problem
// is ErrExpired it returns the node too (everything else verified), so a
// caller can still show it.
func VerifyNode(d *Descriptor, now time.Time) (*Node, error) {
	if d == nil {
		return nil, &DescriptorError{Kind: ErrMalformed, Detail: "no descriptor"}
	}
	dec, err := decode(d, true)
	if err != nil {
		return nil, err
	}
	id := NodeIDOf(dec.identity)
	fail := func(kind error, format string, args ...any) (*Node, error) {
		return nil, &DescriptorError{Name: d.Name, ID: id.Short(), Kind: kind, Detail: fmt.Sprintf(format, args...)}
	}
	if !ed25519.Verify(dec.identity, descriptorMessage(d, dec), dec.sig) {
		return fail(ErrForged, "the descriptor signature does not verify with its identity key (changed after it was signed)")
	}
	if dec.id != id {
		return fail(ErrMismatched, "id %s is not SHA-256 of the identity key (%s)", d.ID, id)
	}
	if !validName(d.Name) {
		return fail(ErrMalformed, "name: want 1 to %d of A-Z a-z 0-9 . _ - starting with a letter or digit", MaxNameLen)
	}
	if err := checkAddress(d.MixAddress); err != nil {
		return fail(ErrMalformed, "mix_address %q: %v", d.MixAddress, err)
	}
	if d.OnionAddress != "" {
		host, _, _ := net.SplitHostPort(d.OnionAddress)
		if err := checkAddress(d.OnionAddress); err != nil || !strings.HasSuffix(host, ".onion") {
			return fail(ErrMalformed, "onion_address %q: want a v3 onion service address, NAME.onion:PORT", d.OnionAddress)
		}
	}
	if len(d.Capabilities) > MaxCapabilities {
		return fail(ErrMalformed, "%d capabilities, at most %d", len(d.Capabilities), MaxCapabilities)
	}
	for i, c := range d.Capabilities {
		if !capRE.MatchString(c) {
			return fail(ErrMalformed, "capability %q: want 1 to 32 of a-z 0-9 - starting with a letter", c)
		}
		if slices.Contains(d.Capabilities[:i], c) {
			return fail(ErrMalformed, "capability %q listed twice", c)
		}
	}
	if d.Published.After(now.Add(MaxClockSkew)) {
		return fail(ErrMalformed, "published %s, more than %v after now (%s): check the clocks",
			d.Published.UTC().Format(time.RFC3339), MaxClockSkew, now.UTC().Format(time.RFC3339))
	}
	n := &Node{
		ID:           id,
		Name:         d.Name,
		Identity:     dec.identity,
		MixAddress:   d.MixAddress,
		OnionAddress: d.OnionAddress,
		Capabilities: slices.Clone(d.Capabilities),
		Exit:         slices.Contains(d.Capabilities, CapExit),
		Published:    d.Published.UTC(),
		Format:       dec.format,
		Descriptor:   d,
	}
	valid := false
	var lastEnd time.Time
	for i, k := range dec.keys {
		for _, o := range dec.keys[:i] {
			if o.epoch == k.epoch {
				return fail(ErrMismatched, "two mix keys for epoch %d", k.epoch)
			}
		}
		if k.notBefore >= k.notAfter {
			return fail(ErrMalformed, "mix key of epoch %d: not_before is not before not_after", k.epoch)
		}
		if !ed25519.Verify(dec.identity, mixKeyMessage(dec.format, id, k.epoch, k.pub, k.notBefore, k.notAfter), k.sig) {
			return fail(ErrMismatched, "mix key of epoch %d is not signed by this node's identity (signed by another identity or for another node, or for another sphinx format)", k.epoch)
		}
		if dec.format == mixkey.XWing {
			// X-Wing: ML-KEM-768 encapsulation key (FIPS 203 §7.2 input
			// check) then an X25519 public key.
			if _, err := mlkem.NewEncapsulationKey768(k.pub[:mlkem.EncapsulationKeySize768]); err != nil {
				return fail(ErrMalformed, "mix key of epoch %d: not an ML-KEM-768 encapsulation key: %v", k.epoch, err)
			}
			if lowOrder(k.pub[mlkem.EncapsulationKeySize768:]) {
				return fail(ErrMalformed, "mix key of epoch %d: its X25519 part is a low-order point", k.epoch)
			}
		} else if lowOrder(k.pub) {
			return fail(ErrMalformed, "mix key of epoch %d is a low-order X25519 point", k.epoch)
		}
		ek := sdk.EpochKey{Epoch: k.epoch, Public: k.pub, NotBefore: time.Unix(k.notBefore, 0).UTC(), NotAfter: time.Unix(k.notAfter, 0).UTC()}
		if now.Before(ek.NotAfter) {
			valid = true
		}
		if ek.NotAfter.After(lastEnd) {
			lastEnd = ek.NotAfter
		}
		n.Keys = append(n.Keys, ek)
	}
	slices.SortFunc(n.Keys, func(a, b sdk.EpochKey) int { return cmp.Compare(a.Epoch, b.Epoch) })
	if !valid {
		_, err := fail(ErrExpired, "no mix key valid at %s or later (the last one ended %s)",
			now.UTC().Format(time.RFC3339), lastEnd.Format(time.RFC3339))
		return n, err
	}
	return n, nil
}

// decoded holds the binary values of a descriptor's fields.
type decoded struct {
	format    mixkey.Kind
	id        sdk.NodeID // as claimed by the ID field
	identity  ed25519.PublicKey
	published int64
	keys      []decodedKey
	sig       []byte
}

type decodedKey struct {
	epoch               uint64
	pub, sig            []byte
	notBefore, notAfter int64
}

// decode checks sizes and syntax of the signed binary fields (and of the
// descriptor signature if withSig) and decodes them.
func decode(d *Descriptor, withSig bool) (*decoded, error) {
	var dec decoded
	fail := func(format string, args ...any) (*decoded, error) {
		return nil, &DescriptorError{Name: d.Name, Kind: ErrMalformed, Detail: fmt.Sprintf(format, args...)}
	}
	if d.Version != DescriptorVersion {
		return fail("version %d is not supported (want %d)", d.Version, DescriptorVersion)
	}
	var err error
	if dec.identity, err = unb64(d.Identity, ed25519.PublicKeySize); err != nil {
		return fail("identity: %v", err)
	}
	raw, err := hex.DecodeString(d.ID)
	if err != nil || len(raw) != 32 || hex.EncodeToString(raw) != d.ID {
		return fail("id: want 64 lowercase hex digits")
	}
	copy(dec.id[:], raw)
	if withSig {
		if dec.sig, err = unb64(d.Signature, ed25519.SignatureSize); err != nil {
			return fail("signature: %v", err)
		}
	}
	if dec.published, err = unixSeconds(d.Published); err != nil {
		return fail("published: %v", err)
	}
	switch d.SphinxFormat {
	case "":
	case mixkey.XWing.String():
		dec.format = mixkey.XWing
	default:
		return fail("sphinx_format %q: want \"xwing\" or none (x25519)", d.SphinxFormat)
	}
	if len(d.MixKeys) == 0 || len(d.MixKeys) > MaxMixKeys {
		return fail("%d mix keys, want 1 to %d", len(d.MixKeys), MaxMixKeys)
	}
	for _, k := range d.MixKeys {
		dk := decodedKey{epoch: k.Epoch}
		if dk.pub, err = unb64(k.Public, publicSize(dec.format)); err != nil {
			return fail("mix key of epoch %d: public: %v", k.Epoch, err)
		}
		if dk.sig, err = unb64(k.Signature, ed25519.SignatureSize); err != nil {
			return fail("mix key of epoch %d: signature: %v", k.Epoch, err)
		}
		if dk.notBefore, err = unixSeconds(k.NotBefore); err != nil {
			return fail("mix key of epoch %d: not_before: %v", k.Epoch, err)
		}
		if dk.notAfter, err = unixSeconds(k.NotAfter); err != nil {
			return fail("mix key of epoch %d: not_after: %v", k.Epoch, err)
		}
		dec.keys = append(dec.keys, dk)
	}
	return &dec, nil
}

const (
	mixKeyContext     = "mixmta mix key v1\x00"
	descriptorContext = "mixmta node descriptor v1\x00"
	// The KEM format's contexts: its signatures never verify as the
	// X25519 format's, nor the reverse.
	xwingMixKeyContext     = "mixmta mix key xwing v1\x00"
	xwingDescriptorContext = "mixmta node descriptor xwing v1\x00"
)

// publicSize is the size of a mix public key of format f (bytes).
func publicSize(f mixkey.Kind) int {
	if f == mixkey.XWing {
		return mixkey.XWingPublicSize
	}
	return 32
}

// mixKeyMessage is the signed encoding of a mix key (package comment).
func mixKeyMessage(f mixkey.Kind, id sdk.NodeID, epoch uint64, pub []byte, notBefore, notAfter int64) []byte {
	ctx := mixKeyContext
	if f == mixkey.XWing {
		ctx = xwingMixKeyContext
	}
	b := make([]byte, 0, len(ctx)+32+8+len(pub)+16)
	b = append(b, ctx...)
	b = append(b, id[:]...)
	b = binary.BigEndian.AppendUint64(b, epoch)
	b = append(b, pub...)
	b = binary.BigEndian.AppendUint64(b, uint64(notBefore))
	return binary.BigEndian.AppendUint64(b, uint64(notAfter))
}

// descriptorMessage is the signed encoding of a descriptor (package
// comment); dec holds its decoded binary fields.
func descriptorMessage(d *Descriptor, dec *decoded) []byte {
	str := func(b []byte, s string) []byte {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		return append(b, s...)
	}
	b := []byte(descriptorContext)
	if dec.format == mixkey.XWing {
		b = []byte(xwingDescriptorContext)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(d.Version))
	b = append(b, dec.id[:]...)
	b = append(b, dec.identity...)
	b = str(b, d.Name)
	b = str(b, d.MixAddress)
	b = str(b, d.OnionAddress)
	b = binary.BigEndian.AppendUint32(b, uint32(len(d.Capabilities)))
	for _, c := range d.Capabilities {
		b = str(b, c)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(dec.published))
	b = binary.BigEndian.AppendUint32(b, uint32(len(dec.keys)))
	for _, k := range dec.keys {
		b = binary.BigEndian.AppendUint64(b, k.epoch)
		b = append(b, k.pub...)
		b = binary.BigEndian.AppendUint64(b, uint64(k.notBefore))
		b = binary.BigEndian.AppendUint64(b, uint64(k.notAfter))
		b = append(b, k.sig...)
	}
	return b
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// unb64 decodes canonical standard base64 of exactly n bytes.
func unb64(s string, n int) ([]byte, error) {
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("not base64: %v", err)
	}
	if len(b) != n {
		return nil, fmt.Errorf("%d bytes, want %d", len(b), n)
	}
	return b, nil
}

func wholeSeconds(t time.Time) time.Time { return time.Unix(t.Unix(), 0).UTC() }

// unixSeconds refuses a time with a fraction of a second (the signature
// covers whole seconds only) or before 1970.
func unixSeconds(t time.Time) (int64, error) {
	if t.Nanosecond() != 0 {
		return 0, fmt.Errorf("%s has a fraction of a second", t.Format(time.RFC3339Nano))
	}
	if t.Unix() < 0 {
		return 0, fmt.Errorf("%s is before 1970", t.Format(time.RFC3339))
	}
	return t.Unix(), nil
}

var (
	nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	capRE  = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
	hostRE = regexp.MustCompile(`^[A-Za-z0-9._:-]+$`)
)

func validName(s string) bool { return len(s) <= MaxNameLen && nameRE.MatchString(s) }

// checkAddress accepts host:port with a port in 1..65535 and a host that is
// an IP literal (IPv6 in brackets) or a DNS name; a name ending in .onion
// must be a valid v3 onion address.
func checkAddress(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want host:port: %v", err)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("port %q: want 1 to 65535", port)
	}
	if host == "" || len(host) > 253 || !hostRE.MatchString(host) {
		return fmt.Errorf("host %q: want an IP address or a DNS name", host)
	}
	if strings.HasSuffix(host, ".onion") && !validOnionV3(host) {
		return fmt.Errorf("host %q: not a valid v3 onion address (length, version or checksum)", host)
	}
	return nil
}

// validOnionV3 checks a v3 onion host name (Tor rend-spec-v3 §6, checked
// by sdk/onion) in its canonical form: lower case, no subdomain, no
// trailing dot.
func validOnionV3(host string) bool {
	canon, _, err := onion.Parse(host)
	return err == nil && canon == host
}

var probeKey = sync.OnceValue(func() *ecdh.PrivateKey {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
})

// lowOrder reports whether an X25519 public key is a low-order point: X25519
// with it gives all zeros (RFC 7748 §6.1), which crypto/ecdh reports as an
// error.
func lowOrder(pub []byte) bool {
	p, err := ecdh.X25519().NewPublicKey(pub)
	if err != nil {
		return true
	}
	_, err = probeKey().ECDH(p)
	return err != nil
}
