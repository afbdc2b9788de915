package main

import (
	"crypto/x509"
	"fmt"
	"net"
	"net/mail"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mixmta/mixmta/sdk"
	"github.com/mixmta/mixmta/sdk/onion"
)

// Config is the stage's config block in the pipeline file. The defaults
// are in main.go; README.md explains every key.
type Config struct {
	Servers []Server `json:"servers" doc:"news servers the article is posted to (NNTP); empty only with forward"`
	PostTo  string   `json:"post_to" doc:"each: post to every server (a retry re-posts everywhere; servers drop the duplicates by Message-ID); first: stop at the first server that takes it"`
	Forward *Forward `json:"forward" doc:"instead of NNTP, mail the article to an external mail2news gateway"`
	SOCKS5  string   `json:"socks5" doc:"SOCKS5 proxy host:port (Tor's 127.0.0.1:9050) for every connection, with per-destination stream isolation; empty: direct connections"`

	PathHost        string       `json:"path_host" doc:"this gateway's path identity (RFC 5537 §3.2.1): the article gets Path: PATH_HOST!not-for-mail"`
	From            string       `json:"from" doc:"From of an article whose message has none"`
	MessageIDDomain string       `json:"message_id_domain" doc:"domain of a generated Message-ID <32 hex digits@domain>, used when the message has no valid one"`
	MaxBytes        int64        `json:"max_bytes" doc:"largest message (header and body) turned into an article, bytes"`
	MaxGroups       int          `json:"max_groups" doc:"most newsgroups one article may be crossposted to (after removing duplicates)"`
	AddressPast     sdk.Duration `json:"address_past" doc:"how far in the past the date in a mail2news-YYYYMMDD-... address may lie"`
	AddressFuture   sdk.Duration `json:"address_future" doc:"how far in the future the date in a mail2news-YYYYMMDD-... address may lie"`
	ConnectTimeout  sdk.Duration `json:"connect_timeout" doc:"TCP (or SOCKS) connect, including a Tor circuit"`
	CommandTimeout  sdk.Duration `json:"command_timeout" doc:"each command and its reply, the article transfer included"`
	MaxIdle         int          `json:"max_idle" doc:"open sessions kept per news server for the next articles; 0: a new connection per article"`
	IdleTimeout     sdk.Duration `json:"idle_timeout" doc:"how long an unused session is kept"`
}

// Server is one news server.
type Server struct {
	Address      string `json:"address" doc:"host:port of the NNTP server (119, or 563 with tls: tls)"`
	Method       string `json:"method" doc:"post (a reader: MODE READER, POST; default) or ihave (a peering feed: IHAVE)"`
	TLS          string `json:"tls" doc:"none (default), starttls (RFC 4642, after MODE READER) or tls (implicit TLS from the first byte)"`
	TLSCAFile    string `json:"tls_ca_file" doc:"PEM file of CA certificates that sign the server's certificate; empty: the system roots"`
	TLSName      string `json:"tls_name" doc:"name the server certificate must carry; empty: the host of address"`
	User         string `json:"user" doc:"AUTHINFO USER name (RFC 4643); empty: no authentication"`
	PasswordFile string `json:"password_file" doc:"file holding the AUTHINFO PASS password (one line; mode 0600 or stricter)"`
}

// Forward sends the article by SMTP to an external mail2news gateway.
type Forward struct {
	To       string `json:"to" doc:"gateway address, e.g. mail2news@gateway.example"`
	Host     string `json:"host" doc:"SMTP relay host:port that takes mail for the gateway (its MX, or your smarthost)"`
	MailFrom string `json:"mail_from" doc:"MAIL FROM of forwarded articles; empty is the null sender <>"`
	HELO     string `json:"helo" doc:"name sent in EHLO"`
}

// Posting targets and methods.
const (
	postToEach  = "each"
	postToFirst = "first"

	methodPost  = "post"
	methodIHAVE = "ihave"

	tlsNone     = "none"
	tlsSTARTTLS = "starttls"
	tlsImplicit = "tls"
)

// Validate checks every key, fills server defaults and names the first bad key.
func (c *Config) Validate() error {
	if len(c.Servers) == 0 && c.Forward == nil {
		return sdk.FieldErrorf("servers", "list at least one news server, or set forward")
	}
	if len(c.Servers) > 0 && c.Forward != nil {
		return sdk.FieldErrorf("forward", "set either servers (NNTP) or forward (mail), not both")
	}
	for i := range c.Servers {
		if err := c.Servers[i].validate(); err != nil {
			err.Field = fmt.Sprintf("servers.%d.%s", i, err.Field)
			return err
		}
	}
	switch c.PostTo {
	case postToEach, postToFirst:
	default:
		return sdk.FieldErrorf("post_to", "must be each or first, got %q", c.PostTo)
	}
	if c.Forward != nil {
		if err := c.Forward.validate(); err != nil {
			err.Field = "forward." + err.Field
			return err
		}
	}
	if c.SOCKS5 != "" {
		if _, _, err := splitHostPort(c.SOCKS5); err != nil {
			return sdk.FieldErrorf("socks5", "%v", err)
		}
	}
	if !validDomain(c.PathHost) {
		return sdk.FieldErrorf("path_host", "must be a domain name (the gateway's FQDN), got %q", c.PathHost)
	}
	if a, err := mail.ParseAddress(c.From); err != nil || !strings.Contains(a.Address, "@") {
		return sdk.FieldErrorf("from", "must be an RFC 5322 address like \"Anonymous <nobody@example.invalid>\", got %q", c.From)
	}
	if !validDomain(c.MessageIDDomain) {
		return sdk.FieldErrorf("message_id_domain", "must be a domain name, got %q", c.MessageIDDomain)
	}
	if c.MaxBytes < 1024 {
		return sdk.FieldErrorf("max_bytes", "must be at least 1024, got %d", c.MaxBytes)
	}
	if c.MaxIdle < 0 {
		return sdk.FieldErrorf("max_idle", "must be >= 0, got %d", c.MaxIdle)
	}
	if c.MaxGroups < 1 {
		return sdk.FieldErrorf("max_groups", "must be at least 1, got %d", c.MaxGroups)
	}
	for _, d := range []struct {
		key string
		v   sdk.Duration
		min time.Duration
	}{
		{"address_past", c.AddressPast, 0}, {"address_future", c.AddressFuture, 0},
		{"connect_timeout", c.ConnectTimeout, time.Second}, {"command_timeout", c.CommandTimeout, time.Second},
		{"idle_timeout", c.IdleTimeout, time.Second},
	} {
		if d.v.D() < d.min {
			return sdk.FieldErrorf(d.key, "must be at least %s, got %s", d.min, d.v)
		}
	}
	return nil
}

func (s *Server) validate() *sdk.FieldError {
	if _, _, err := splitHostPort(s.Address); err != nil {
		return sdk.FieldErrorf("address", "%v", err)
	}
	if s.Method == "" {
		s.Method = methodPost
	}
	if s.Method != methodPost && s.Method != methodIHAVE {
		return sdk.FieldErrorf("method", "must be post or ihave, got %q", s.Method)
	}
	if s.TLS == "" {
		s.TLS = tlsNone
	}
	switch s.TLS {
	case tlsNone, tlsSTARTTLS, tlsImplicit:
	default:
		return sdk.FieldErrorf("tls", "must be none, starttls or tls, got %q", s.TLS)
	}
	if s.TLS == tlsSTARTTLS && s.Method == methodIHAVE {
		// RFC 4642 STARTTLS is a reader-mode command in INN (nnrpd); a
		// peering feed over TLS uses implicit TLS.
		return sdk.FieldErrorf("tls", "starttls works with method post only; use tls (implicit) for an ihave feed")
	}
	if s.TLSCAFile != "" {
		if s.TLS == tlsNone {
			return sdk.FieldErrorf("tls_ca_file", "needs tls: starttls or tls")
		}
		if _, err := loadCAs(s.TLSCAFile); err != nil {
			return sdk.FieldErrorf("tls_ca_file", "%v", err)
		}
	}
	if (s.User == "") != (s.PasswordFile == "") {
		return sdk.FieldErrorf("user", "user and password_file go together")
	}
	if s.PasswordFile != "" {
		if _, err := readSecret(s.PasswordFile); err != nil {
			return sdk.FieldErrorf("password_file", "%v", err)
		}
		host, _, _ := splitHostPort(s.Address)
		if s.TLS == tlsNone && !privateLink(host) {
			return sdk.FieldErrorf("tls", "AUTHINFO without TLS sends the password in the clear: set tls (or use a loopback or .onion address)")
		}
	}
	return nil
}

// privateLink reports whether host is reached without crossing a network
// an eavesdropper sees: loopback, or an onion service (Tor encrypts end to
// end).
func privateLink(host string) bool {
	if onion.IsOnion(host) || strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (f *Forward) validate() *sdk.FieldError {
	if a, err := mail.ParseAddress(f.To); err != nil || a.Name != "" || !strings.Contains(a.Address, "@") {
		return sdk.FieldErrorf("to", "must be a bare address like mail2news@gateway.example, got %q", f.To)
	}
	if _, _, err := splitHostPort(f.Host); err != nil {
		return sdk.FieldErrorf("host", "%v", err)
	}
	if f.MailFrom != "" {
		if a, err := mail.ParseAddress(f.MailFrom); err != nil || a.Name != "" {
			return sdk.FieldErrorf("mail_from", "must be a bare address or empty, got %q", f.MailFrom)
		}
	}
	if f.HELO == "" {
		f.HELO = "mail2news.invalid"
	}
	if !validDomain(f.HELO) {
		return sdk.FieldErrorf("helo", "must be a domain name, got %q", f.HELO)
	}
	return nil
}

// readSecret reads a password file: one line, and not readable by group or
// others (the password would leak to every local user).
func readSecret(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s has mode %o; make it 0600", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" || strings.ContainsAny(pw, "\r\n") {
		return "", fmt.Errorf("%s must hold exactly one non-empty line", path)
	}
	return pw, nil
}

// splitHostPort parses "host:port" (port required).
func splitHostPort(s string) (string, int, error) {
	host, ps, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, fmt.Errorf("want host:port, got %q", s)
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", s)
	}
	if host == "" || strings.ContainsAny(host, " \t/@") {
		return "", 0, fmt.Errorf("bad host in %q", s)
	}
	return host, port, nil
}

// validDomain accepts letters, digits, hyphens and dots (RFC 1035 labels).
func validDomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// loadCAs reads a PEM bundle of CA certificates.
func loadCAs(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("no PEM certificate in %s", path)
	}
	return p, nil
}
