package nodes

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestExportThenVerifyAcceptsAndDecodesTheDescriptor(t *testing.T) {
	n := newTestNode(t, "alpha", true, t0)
	b, err := json.Marshal(n.desc)
	if err != nil {
		t.Fatal(err)
	}
	d, err := ParseDescriptor(b)
	if err != nil {
		t.Fatal(err)
	}
	node, err := VerifyNode(d, t0)
	if err != nil {
		t.Fatalf("Verify of a fresh export: %v", err)
	}
	if node.ID != n.id.ID() || !bytes.Equal(node.Identity, n.id.Public()) || node.Name != "alpha" ||
		!node.Exit || node.MixAddress != "127.0.0.1:7000" || !node.Published.Equal(t0) {
		t.Errorf("decoded node %+v does not match what was exported", node)
	}
	own := n.ks.Keys(t0)
	if len(node.Keys) != len(own) {
		t.Fatalf("descriptor has %d keys, want %d", len(node.Keys), len(own))
	}
	for i, k := range node.Keys {
		if k.Epoch != own[i].Epoch || !bytes.Equal(k.Public, own[i].Public) ||
			!k.NotBefore.Equal(own[i].NotBefore) || !k.NotAfter.Equal(own[i].NotAfter) {
			t.Errorf("key %d: got %+v, want the public part of %+v", i, k, own[i])
		}
	}
}

func TestExportLeavesOutExpiredKeysAndSortsCapabilities(t *testing.T) {
	n := newTestNode(t, "alpha", false, t0)
	ended := n.ks.Keys(t0)[0]
	later := t0.Add(testLength + testGrace) // ended's grace is over
	n.ks.Ensure(later)
	keys := append(n.ks.Keys(later), ended)
	d, err := Export(n.id, keys, NodeInfo{Name: "alpha", MixAddress: "[::1]:7000", Capabilities: []string{"exit", "mail2news", "exit"}}, later)
	if err != nil {
		t.Fatal(err)
	}
	var epochs []uint64
	for _, k := range d.MixKeys {
		epochs = append(epochs, k.Epoch)
	}
	e := Epoch(later, testLength)
	if !slices.Equal(epochs, []uint64{e, e + 1}) {
		t.Errorf("exported epochs %v, want %v", epochs, []uint64{e, e + 1})
	}
	if !slices.Equal(d.Capabilities, []string{"exit", "mail2news"}) {
		t.Errorf("capabilities %v, want [exit mail2news]", d.Capabilities)
	}
}

// TestVerifyRejectsForgedDescriptor changes one thing after signing: every
// field is covered by a signature.
func TestVerifyRejectsForgedDescriptor(t *testing.T) {
	n := newTestNode(t, "alpha", true, t0)
	other := newTestNode(t, "beta", false, t0)
	cases := []struct {
		name   string
		change func(d *Descriptor)
	}{
		{"flipped bit in the signature", func(d *Descriptor) { d.Signature = flipB64(t, d.Signature, 10) }},
		{"name", func(d *Descriptor) { d.Name = "alphb" }},
		{"mix address", func(d *Descriptor) { d.MixAddress = "127.0.0.1:7001" }},
		{"onion address added", func(d *Descriptor) {
			d.OnionAddress = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion:7000"
		}},
		{"exit capability removed", func(d *Descriptor) { d.Capabilities = nil }},
		{"capability added", func(d *Descriptor) { d.Capabilities = append(d.Capabilities, "mail2news") }},
		{"published", func(d *Descriptor) { d.Published = d.Published.Add(time.Second) }},
		{"flipped bit in a mix key", func(d *Descriptor) { d.MixKeys[1].Public = flipB64(t, d.MixKeys[1].Public, 5) }},
		{"flipped bit in a mix key signature", func(d *Descriptor) { d.MixKeys[0].Signature = flipB64(t, d.MixKeys[0].Signature, 63) }},
		{"mix key epoch", func(d *Descriptor) { d.MixKeys[0].Epoch-- }},
		{"mix key not_after", func(d *Descriptor) { d.MixKeys[0].NotAfter = d.MixKeys[0].NotAfter.Add(time.Hour) }},
		{"mix key not_before", func(d *Descriptor) { d.MixKeys[1].NotBefore = d.MixKeys[1].NotBefore.Add(-time.Second) }},
		{"mix key removed", func(d *Descriptor) { d.MixKeys = d.MixKeys[:1] }},
		{"mix keys swapped", func(d *Descriptor) { d.MixKeys[0], d.MixKeys[1] = d.MixKeys[1], d.MixKeys[0] }},
		{"mix key of another node", func(d *Descriptor) { d.MixKeys[1] = other.desc.MixKeys[1] }},
		{"identity and id of another node", func(d *Descriptor) { d.Identity, d.ID = other.desc.Identity, other.desc.ID }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := clone(t, n.desc)
			c.change(d)
			err := Verify(d, t0)
			if !errors.Is(err, ErrForged) {
				t.Fatalf("err = %v, want ErrForged", err)
			}
			if !strings.Contains(err.Error(), "forged") || !strings.Contains(err.Error(), `"`+d.Name+`"`) {
				t.Errorf("error %q does not name the descriptor and say forged", err)
			}
		})
	}
}

// signedBy re-signs d with id after a change, so that what is checked is
// the change and not the descriptor signature.
func signedBy(t *testing.T, d *Descriptor, id *Identity) *Descriptor {
	t.Helper()
	if err := signDescriptor(d, id); err != nil {
		t.Fatal(err)
	}
	return d
}

// mixKeyFor signs a mix key entry for node id nodeID with signer.
func mixKeyFor(signer *Identity, nodeID [32]byte, epoch uint64, pub []byte, nb, na time.Time) MixKey {
	sig := ed25519.Sign(signer.priv, mixKeyMessage(formatOf(pub), nodeID, epoch, pub, nb.Unix(), na.Unix()))
	return MixKey{Epoch: epoch, Public: b64(pub), NotBefore: nb, NotAfter: na, Signature: b64(sig)}
}

func TestVerifyRejectsMismatchedDescriptor(t *testing.T) {
	n := newTestNode(t, "alpha", true, t0)
	other := newTestNode(t, "beta", false, t0)
	key0 := n.desc.MixKeys[0]
	pub0, _ := base64.StdEncoding.DecodeString(key0.Public)
	freshPub := other.ks.Keys(t0)[0].Public
	cases := []struct {
		name   string
		change func(d *Descriptor)
		detail string
	}{
		{"id is not the hash of the identity", func(d *Descriptor) { d.ID = other.desc.ID }, "is not SHA-256"},
		{"mix key signed by another identity", func(d *Descriptor) { d.MixKeys[1] = other.desc.MixKeys[1] }, "not signed by this node's identity"},
		{"mix key signed by this identity for another node", func(d *Descriptor) {
			d.MixKeys[1] = mixKeyFor(n.id, other.id.ID(), key0.Epoch+1, freshPub, key0.NotBefore.Add(testLength), key0.NotAfter.Add(testLength))
		}, "not signed by this node's identity"},
		{"two keys for one epoch", func(d *Descriptor) {
			d.MixKeys[1] = mixKeyFor(n.id, n.id.ID(), key0.Epoch, freshPub, key0.NotBefore, key0.NotAfter)
		}, "two mix keys for epoch"},
		{"same key listed twice", func(d *Descriptor) {
			d.MixKeys[1] = mixKeyFor(n.id, n.id.ID(), key0.Epoch, pub0, key0.NotBefore, key0.NotAfter)
		}, "two mix keys for epoch"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := clone(t, n.desc)
			c.change(d)
			err := Verify(signedBy(t, d, n.id), t0)
			if !errors.Is(err, ErrMismatched) || !strings.Contains(err.Error(), c.detail) {
				t.Fatalf("err = %v, want ErrMismatched saying %q", err, c.detail)
			}
		})
	}
}

func TestVerifyRejectsDescriptorWithNoKeyValidNowOrLater(t *testing.T) {
	n := newTestNode(t, "alpha", false, t0)
	last := n.desc.MixKeys[len(n.desc.MixKeys)-1].NotAfter
	cases := []struct {
		at      time.Time
		expired bool
	}{
		{t0, false},
		{last.Add(-time.Nanosecond), false},
		{last, true}, // validity is [not_before, not_after)
		{last.Add(24 * time.Hour), true},
	}
	for _, c := range cases {
		node, err := VerifyNode(n.desc, c.at)
		if c.expired != errors.Is(err, ErrExpired) || (!c.expired && err != nil) {
			t.Errorf("at not_after%+v: err = %v, want expired=%v", c.at.Sub(last), err, c.expired)
		}
		if c.expired && (node == nil || node.ID != n.id.ID() || !strings.Contains(err.Error(), "no mix key valid")) {
			t.Errorf("expired: node %v, err %q: want the node and a clear error", node, err)
		}
	}
}

func TestVerifyRejectsMalformedDescriptor(t *testing.T) {
	n := newTestNode(t, "alpha", false, t0)
	k0 := n.desc.MixKeys[0]
	cases := []struct {
		name   string
		change func(d *Descriptor)
		resign bool
	}{
		{"version 2", func(d *Descriptor) { d.Version = 2 }, false},
		{"identity not base64", func(d *Descriptor) { d.Identity = "not*base64" }, false},
		{"identity 31 bytes", func(d *Descriptor) { d.Identity = b64(make([]byte, 31)) }, false},
		{"id uppercase", func(d *Descriptor) { d.ID = strings.ToUpper(d.ID) }, false},
		{"signature 63 bytes", func(d *Descriptor) { d.Signature = b64(make([]byte, 63)) }, false},
		{"no mix keys", func(d *Descriptor) { d.MixKeys = nil }, false},
		{"mix key 31 bytes", func(d *Descriptor) { d.MixKeys[0].Public = b64(make([]byte, 31)) }, false},
		{"fraction of a second", func(d *Descriptor) { d.Published = d.Published.Add(time.Millisecond) }, false},
		{"empty name", func(d *Descriptor) { d.Name = "" }, true},
		{"name with a space", func(d *Descriptor) { d.Name = "al pha" }, true},
		{"name with a newline", func(d *Descriptor) { d.Name = "alpha\n" }, true},
		{"name of 65 bytes", func(d *Descriptor) { d.Name = strings.Repeat("a", 65) }, true},
		{"address without port", func(d *Descriptor) { d.MixAddress = "127.0.0.1" }, true},
		{"address port 0", func(d *Descriptor) { d.MixAddress = "127.0.0.1:0" }, true},
		{"address port 65536", func(d *Descriptor) { d.MixAddress = "127.0.0.1:65536" }, true},
		{"onion with bad checksum", func(d *Descriptor) {
			d.OnionAddress = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wie.onion:7000"
		}, true},
		{"onion v2", func(d *Descriptor) { d.OnionAddress = "expyuzz4wqqyqhjn.onion:7000" }, true},
		{"onion address not an onion", func(d *Descriptor) { d.OnionAddress = "example.org:7000" }, true},
		{"capability uppercase", func(d *Descriptor) { d.Capabilities = []string{"Exit"} }, true},
		{"capability twice", func(d *Descriptor) { d.Capabilities = []string{"exit", "exit"} }, true},
		{"published far in the future", func(d *Descriptor) { d.Published = t0.Add(MaxClockSkew + time.Second) }, true},
		{"mix key ends before it starts", func(d *Descriptor) {
			d.MixKeys[0] = mixKeyFor(n.id, n.id.ID(), k0.Epoch, mustB64(k0.Public), k0.NotAfter, k0.NotBefore)
		}, true},
		{"low-order mix key", func(d *Descriptor) {
			d.MixKeys[0] = mixKeyFor(n.id, n.id.ID(), k0.Epoch, make([]byte, 32), k0.NotBefore, k0.NotAfter)
		}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := clone(t, n.desc)
			c.change(d)
			if c.resign {
				signedBy(t, d, n.id)
			}
			if err := Verify(d, t0); !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
		})
	}
}

func mustB64(s string) []byte {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func TestParseDescriptorIsStrict(t *testing.T) {
	n := newTestNode(t, "alpha", false, t0)
	good, _ := json.Marshal(n.desc)
	cases := []struct {
		name string
		data string
	}{
		{"unknown field", strings.Replace(string(good), `"version":1`, `"version":1,"extra":"x"`, 1)},
		{"trailing data", string(good) + " {}"},
		{"not JSON", "alpha"},
		{"wrong type", strings.Replace(string(good), `"version":1`, `"version":"1"`, 1)},
	}
	for _, c := range cases {
		if _, err := ParseDescriptor([]byte(c.data)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", c.name, err)
		}
	}
	if _, err := ParseDescriptor(good); err != nil {
		t.Errorf("the exported descriptor does not parse: %v", err)
	}
}

func TestCheckAddressAcceptsIPsNamesAndValidV3Onions(t *testing.T) {
	cases := []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:7000", true},
		{"[::1]:7000", true},
		{"mix.example.org:443", true},
		{"2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion:7000", true}, // torproject.org
		{"duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion:25", true},
		{"2GZYXA5IHM7NSGGFXNU52RCK2VV4RVMDLKIU3ZZUI5DU4XYCLEN53WID.onion:7000", false},
		{"x.2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion:7000", false},
		{"duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczae.onion:25", false},
		{"127.0.0.1", false},
		{":7000", false},
		{"a b:7000", false},
		{"127.0.0.1:http", false},
	}
	for _, c := range cases {
		if err := checkAddress(c.addr); (err == nil) != c.ok {
			t.Errorf("checkAddress(%q) = %v, want ok=%v", c.addr, err, c.ok)
		}
	}
}
