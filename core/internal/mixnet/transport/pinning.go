package transport

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"time"
)

// linkCN is the Subject CN of every certificate: protocol version and
// packet size, so mismatched nodes refuse each other at the handshake. TLS
// 1.3 encrypts certificates: an observer does not see it.
func linkCN(packetSize int) string { return fmt.Sprintf("mixmta-link/1 packet-size=%d", packetSize) }

// selfSigned makes the in-memory certificate of identity: self-signed, its
// key the Ed25519 identity key. Only the key and the CN are ever checked.
func selfSigned(identity ed25519.PrivateKey, cn string) (tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(20, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	pub := identity.Public()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, identity)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("transport: certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("transport: certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: identity, Leaf: leaf}, nil
}

// peerKey returns the Ed25519 key of the peer's only certificate after
// checking its CN. The handshake (CertificateVerify) has already proved the
// peer holds the private half; the certificate's own signature means
// nothing and is not checked.
func peerKey(cs tls.ConnectionState, cn string) (ed25519.PublicKey, error) {
	if len(cs.PeerCertificates) != 1 {
		return nil, fmt.Errorf("%w: %d certificates, want 1", ErrProtocol, len(cs.PeerCertificates))
	}
	leaf := cs.PeerCertificates[0]
	pub, ok := leaf.PublicKey.(ed25519.PublicKey)
	if !ok || len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: certificate key is not Ed25519", ErrProtocol)
	}
	if leaf.Subject.CommonName != cn {
		return nil, fmt.Errorf("%w: peer speaks %q, want %q", ErrProtocol, leaf.Subject.CommonName, cn)
	}
	return pub, nil
}

func baseTLS(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// Every connection does the full mutual authentication.
		SessionTicketsDisabled: true,
		// Same record layout for every frame, from the first on.
		DynamicRecordSizingDisabled: true,
	}
}

// clientTLS accepts only a listener whose key is want. No ServerName: no
// SNI on the wire.
func (t *Direct) clientTLS(want ed25519.PublicKey) *tls.Config {
	c := baseTLS(t.cert)
	c.InsecureSkipVerify = true // chains and names mean nothing here; VerifyConnection pins the key
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		pub, err := peerKey(cs, t.cn)
		if err != nil {
			return err
		}
		if subtle.ConstantTimeCompare(pub, want) != 1 {
			return ErrIdentity
		}
		return nil
	}
	return c
}

// serverTLS accepts only a dialer whose key Lookup knows.
func (t *Direct) serverTLS() *tls.Config {
	c := baseTLS(t.cert)
	c.ClientAuth = tls.RequireAnyClientCert
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		pub, err := peerKey(cs, t.cn)
		if err != nil {
			return err
		}
		if _, ok := t.cfg.Lookup(pub); !ok {
			return ErrUnknownPeer
		}
		return nil
	}
	return c
}
