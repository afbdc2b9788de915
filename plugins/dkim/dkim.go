package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/hashicorp/go-hclog"

	"github.com/mixmta/mixmta/sdk"
)

// minRSABits is the smallest RSA key accepted. RFC 8301 §3.2 allows 1024
// bits; 2048 is what verifiers expect today.
const minRSABits = 2048

// maxKeyFile bounds the key file read (an RSA 8192 PEM is ~6.5 KiB).
const maxKeyFile = 64 << 10

// signer is the stage value. It is safe for concurrent use: each message
// gets its own dkim.Signer; the key is read-only.
type signer struct {
	cfg      Config
	log      hclog.Logger
	key      crypto.Signer
	headers  []string        // as configured
	oversign map[string]bool // lower-case names
}

var _ sdk.Transformer = (*signer)(nil)

func newDKIM(cfg Config, log hclog.Logger) (*signer, error) {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	key, err := loadKey(cfg.KeyFile)
	if err != nil {
		return nil, sdk.FieldErrorf("key_file", "%v", err)
	}
	s := &signer{cfg: cfg, log: log, key: key, headers: cfg.Headers, oversign: map[string]bool{}}
	for _, h := range cfg.Oversign {
		s.oversign[strings.ToLower(h)] = true
	}
	rec, err := txtRecord(key.Public())
	if err != nil {
		return nil, sdk.FieldErrorf("key_file", "%v", err)
	}
	log.Info("[DKIM] signing; the public key must be published", "name", cfg.Selector+"._domainkey."+cfg.Domain, "txt", rec)
	return s, nil
}

// loadKey reads a PEM private key: PKCS#8 ("PRIVATE KEY") holding an
// Ed25519 or RSA key, or PKCS#1 ("RSA PRIVATE KEY"). The file must be a
// regular file that neither group nor others may read or write (0600 or
// stricter): a signing key anyone on the host can read lets them sign as
// the domain. Encrypted PEM is refused (the daemon has no one to ask for
// a passphrase).
func loadKey(path string) (crypto.Signer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("mode %04o lets group or others access the key; want 0600 or stricter (chmod 600)", perm)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxKeyFile {
		return nil, errors.New("larger than 64 KiB: not a key file")
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block (make the key with openssl genpkey, see the plugin README)")
	}
	if _, enc := block.Headers["Proc-Type"]; enc || block.Type == "ENCRYPTED PRIVATE KEY" {
		return nil, errors.New("the key is encrypted; store it unencrypted with mode 0600")
	}
	var k any
	switch block.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key", block.Type)
	}
	if err != nil {
		return nil, err
	}
	switch k := k.(type) {
	case ed25519.PrivateKey:
		return k, nil
	case *rsa.PrivateKey:
		if k.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("RSA key of %d bits; want at least %d", k.N.BitLen(), minRSABits)
		}
		return k, nil
	}
	return nil, fmt.Errorf("%T keys cannot sign DKIM; use Ed25519 or RSA", k)
}

// txtRecord returns the DNS TXT record (RFC 6376 §3.6.1) that publishes
// pub at SELECTOR._domainkey.DOMAIN: for Ed25519 the raw 32-byte key
// (RFC 8463 §4.2), for RSA the DER SubjectPublicKeyInfo, base64 each.
func txtRecord(pub crypto.PublicKey) (string, error) {
	switch pub := pub.(type) {
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub), nil
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return "", err
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
	}
	return "", fmt.Errorf("unsupported public key %T", pub)
}

// Transform signs the message and returns its header with the
// DKIM-Signature field prepended (RFC 6376 §5.6); the body is unchanged.
// The signature covers, with relaxed/relaxed canonicalization, every
// instance of each configured header field present, and one more
// (absent) instance of each oversigned field, so a field added later
// breaks it (§5.4.2, §8.15). From is always signed. A header the signer
// cannot parse is a permanent 554 5.6.0: mail that must be signed never
// leaves unsigned. The signature's t= is the signing time, so a repeat
// after a crash gives another, equally valid, signature. A header
// section without its closing empty line (a message without a body) gets
// it, as the Change contract requires.
func (s *signer) Transform(_ context.Context, m *sdk.Message) (*sdk.Change, error) {
	header := m.Header
	switch {
	case bytes.HasSuffix(header, []byte("\r\n\r\n")) || bytes.Equal(header, []byte("\r\n")):
	case bytes.HasSuffix(header, []byte("\r\n")):
		header = append(header[:len(header):len(header)], "\r\n"...)
	default:
		header = append(header[:len(header):len(header)], "\r\n\r\n"...)
	}
	ds, err := dkim.NewSigner(&dkim.SignOptions{
		Domain:                 s.cfg.Domain,
		Selector:               s.cfg.Selector,
		Signer:                 s.key,
		Hash:                   crypto.SHA256,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.CanonicalizationRelaxed,
		HeaderKeys:             s.headerKeys(header),
	})
	if err != nil {
		return nil, sdk.Temporary(451, "3.5", "dkim: signer misconfigured: %v", err)
	}
	_, err = ds.Write(header)
	if err == nil {
		_, err = ds.Write(m.Body)
	}
	if cerr := ds.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		s.log.Debug("signing failed", "error", err)
		return nil, sdk.Permanent(554, "6.0", "dkim: the message cannot be signed: malformed header section")
	}
	sig := ds.Signature()
	h := make([]byte, 0, len(sig)+len(header))
	h = append(append(h, sig...), header...)
	return &sdk.Change{Header: h}, nil
}

// headerKeys is the h= list for header: each configured field as many
// times as it is present, once more if it is oversigned; From at least
// once.
func (s *signer) headerKeys(header []byte) []string {
	count := fieldCounts(header)
	var keys []string
	for _, name := range s.headers {
		n := count[strings.ToLower(name)]
		if s.oversign[strings.ToLower(name)] || (n == 0 && strings.EqualFold(name, "From")) {
			n++
		}
		for range n {
			keys = append(keys, name)
		}
	}
	return keys
}

// fieldCounts counts the header fields by lower-case name (a line that
// does not start with white space starts a field, RFC 5322 §2.2.3).
func fieldCounts(header []byte) map[string]int {
	count := map[string]int{}
	for len(header) > 0 {
		line := header
		if i := bytes.IndexByte(header, '\n'); i >= 0 {
			line, header = header[:i], header[i+1:]
		} else {
			header = nil
		}
		if len(line) == 0 || line[0] == ' ' || line[0] == '\t' {
			continue
		}
		if name, _, ok := bytes.Cut(line, []byte(":")); ok {
			count[strings.ToLower(strings.TrimRight(string(name), " \t"))]++
		}
	}
	return count
}
