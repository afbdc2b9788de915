package directory

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
)

// fuzzAuthorities are three authorities with fixed keys, so that a corpus
// entry means the same in every run.
func fuzzAuthorities() ([]testAuth, []Authority) {
	var ta []testAuth
	var as []Authority
	for i := range 3 {
		priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{byte(i + 1)}, ed25519.SeedSize))
		a := Authority{Name: "auth" + string(rune('1'+i)), Identity: priv.Public().(ed25519.PublicKey), Address: "127.0.0.1:1"}
		ta = append(ta, testAuth{a, priv})
		as = append(as, a)
	}
	return ta, as
}

// A consensus document from the network (any authority, anyone on the
// path) never panics the node verifying it; what verifies is signed by a
// majority.
func FuzzVerifyConsensus(f *testing.F) {
	ta, as := fuzzAuthorities()
	now := time.Now()
	c := signedConsensus(f, ta, 2, now, memNode(f, "a", now, testEpoch), memNode(f, "b", now, testEpoch))
	f.Add(encode(f, c))
	f.Add([]byte(`{"version":1,"epoch":1,"params":{"epoch_seconds":10},"nodes":[null,{}],"signatures":[{}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := VerifyConsensus(data, as, 0, now)
		if err == nil && len(v.Signers) < Majority(len(as)) {
			t.Fatalf("accepted with signers %v", v.Signers)
		}
	})
}

// A vote fetched from a peer never panics the authority verifying and
// tallying it.
func FuzzVote(f *testing.F) {
	ta, as := fuzzAuthorities()
	now := time.Now()
	e := nodes.Epoch(now, testEpoch)
	v := &Vote{Version: Version, Epoch: e, Params: testParams, Nodes: []*nodes.Descriptor{memNode(f, "a", now, testEpoch)}}
	v.Sign(ta[0].key)
	b, _ := json.Marshal(v)
	f.Add(b)
	f.Add([]byte(`{"version":1,"nodes":[null,{"id":"00"}],"signature":""}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var v Vote
		if json.Unmarshal(data, &v) != nil {
			return
		}
		if VerifyVote(&v, as[0], v.Epoch) != nil {
			// Unsigned votes still reach Tally in this fuzz: it must not
			// panic on what a peer could sign.
			v.Authority = b64(as[0].Identity)
		}
		Tally(v.Epoch, 1, []*Vote{&v})
	})
}

// The authority's HTTP listener (descriptor uploads, vote, signature and
// consensus requests from anyone) never panics.
func FuzzAuthorityRequest(f *testing.F) {
	ta, as := fuzzAuthorities()
	now := time.Now()
	d, _ := json.Marshal(memNode(f, "a", now, testEpoch))
	f.Add("POST", "/v1/descriptor", d)
	f.Add("GET", "/v1/consensus/1", []byte{})
	f.Add("GET", "/v1/vote/18446744073709551615", []byte{})
	f.Add("POST", "/v1/descriptor", []byte(`{"mix_keys":[null]}`))
	a, err := NewServer(AuthorityConfig{Key: ta[0].key, Authorities: as, Epoch: testEpoch, Params: testParams})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, method, path string, body []byte) {
		req, err := http.NewRequest(method, "http://a"+path, bytes.NewReader(body))
		if err != nil {
			return
		}
		a.ServeHTTP(httptest.NewRecorder(), req)
	})
}
