package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"mime"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/emersion/go-message/textproto"

	"github.com/mixmta/mixmta/sdk"
)

// obscuredSubject replaces the outer Subject when the real one travels in
// the encrypted part (RFC 9788 §4.1 "[...]").
const obscuredSubject = "[...]"

// protectedFields are copied into the encrypted part when the Subject is
// protected (protected-headers="v1", as Thunderbird, K-9 and Autocrypt
// clients read it): a client shows the inner values.
var protectedFields = map[string]bool{
	"From": true, "To": true, "Cc": true, "Reply-To": true, "Subject": true, "Date": true,
	"Message-Id": true, "In-Reply-To": true, "References": true, "Followup-To": true,
}

// subjectLike are fields that repeat or summarize the Subject: Outlook
// and Exchange copy it into Thread-Topic, and Keywords, Comments (RFC
// 5322 §3.6.5) and Summary (RFC 5536 §3.2.12) describe the content. With
// the Subject protected they go inside and are left out of the outer
// header, or the obscured Subject would still be readable next to it.
var subjectLike = map[string]bool{"thread-topic": true, "keywords": true, "comments": true, "summary": true}

// split is a message's header section divided for PGP/MIME.
type split struct {
	outer   [][]byte // raw fields that stay outside, in order
	content [][]byte // raw Content-* fields, which go inside
	inside  [][]byte // raw copies of protectedFields, for protected headers
	subject bool     // the outer part has a Subject
	ctype   string   // media type of the message, lower case ("" if none)
	params  map[string]string
}

// splitHeader parses a header section (RFC 5322 §2.2, as go-message reads
// it, raw bytes kept) into what stays outside and what goes inside.
// MIME-Version is dropped: the outer part gets its own.
func splitHeader(header []byte) (*split, error) {
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(header)))
	if err != nil {
		return nil, err
	}
	s := &split{}
	for f := h.Fields(); f.Next(); {
		raw, err := f.Raw()
		if err != nil {
			return nil, err
		}
		raw = crlf(raw)
		key := f.Key()
		switch {
		case strings.EqualFold(key, "MIME-Version"):
		case strings.HasPrefix(strings.ToLower(key), "content-"):
			s.content = append(s.content, raw)
			if strings.EqualFold(key, "Content-Type") && s.ctype == "" {
				s.ctype, s.params, _ = mime.ParseMediaType(f.Value())
			}
		default:
			if protectedFields[key] || subjectLike[strings.ToLower(key)] {
				s.inside = append(s.inside, raw)
			}
			if strings.EqualFold(key, "Subject") {
				s.subject = true
			}
			s.outer = append(s.outer, raw)
		}
	}
	return s, nil
}

// crlf makes sure a raw field ends with CRLF.
func crlf(raw []byte) []byte {
	raw = bytes.TrimRight(raw, "\r\n")
	return append(raw[:len(raw):len(raw)], '\r', '\n')
}

// alreadyEncrypted reports whether a message is encrypted end to end
// already: PGP/MIME or any other multipart/encrypted (RFC 1847), S/MIME
// enveloped or authEnveloped data (RFC 8551 §3.3, §3.4; smime-type
// given), or an inline OpenPGP message (a text body that is one armored
// PGP MESSAGE and nothing else, white space aside).
func alreadyEncrypted(s *split, body []byte) bool {
	switch s.ctype {
	case "multipart/encrypted":
		return true
	case "application/pkcs7-mime", "application/x-pkcs7-mime":
		// Only the types that are encrypted: an opaque signed-data, which
		// older clients send without smime-type, is clear text in DER, and
		// wrapping an encrypted one once more loses nothing.
		st := strings.ToLower(s.params["smime-type"])
		return st == "enveloped-data" || st == "authenveloped-data"
	case "", "text/plain":
		// The whole body must be the one armored message: text before or
		// after it (a reply under an encrypted quote) would be stored in
		// the clear.
		t := bytes.TrimSpace(body)
		return bytes.HasPrefix(t, []byte("-----BEGIN PGP MESSAGE-----")) &&
			bytes.HasSuffix(t, []byte("\n-----END PGP MESSAGE-----")) &&
			bytes.Count(t, []byte("-----BEGIN PGP")) == 1 && bytes.Count(t, []byte("-----END PGP")) == 1
	}
	return false
}

// innerHeader is the header of the MIME entity that gets encrypted (RFC
// 3156 §4), the body follows it: the Content-* fields; with protect, also
// copies of the protected fields and protected-headers="v1" on its
// Content-Type. A message without Content-Type is text/plain;
// charset=us-ascii (RFC 2045 §5.2), said explicitly. It ends with the
// empty line.
func innerHeader(s *split, protect bool) []byte {
	var b bytes.Buffer
	hasType := false
	for _, f := range s.content {
		name, _, _ := bytes.Cut(f, []byte(":"))
		if strings.EqualFold(strings.TrimSpace(string(name)), "Content-Type") && !hasType {
			hasType = true
			if protect {
				b.Write(bytes.TrimRight(f, "\r\n"))
				b.WriteString(";\r\n protected-headers=\"v1\"\r\n")
				continue
			}
		}
		b.Write(f)
	}
	if !hasType {
		b.WriteString("Content-Type: text/plain; charset=us-ascii")
		if protect {
			b.WriteString("; protected-headers=\"v1\"")
		}
		b.WriteString("\r\n")
	}
	if protect {
		for _, f := range s.inside {
			b.Write(f)
		}
	}
	b.WriteString("\r\n")
	return b.Bytes()
}

// pgpMIME encrypts the message to keys and returns the whole PGP/MIME
// message (RFC 3156 §4): the outer header fields as they were (Subject
// replaced by "[...]" and the subjectLike fields left out with protect),
// MIME-Version, a multipart/encrypted Content-Type, then the version part
// and the armored OpenPGP message, all CRLF and 7-bit. The ciphertext is armored straight into the result:
// one copy of the message in memory besides the input.
func pgpMIME(s *split, body []byte, keys openpgp.EntityList, protect bool) ([]byte, error) {
	var rnd [16]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	// Base64 and armor lines never begin with "--pgp-", so the boundary
	// cannot occur in the parts.
	boundary := "pgp-" + hex.EncodeToString(rnd[:])
	inner := innerHeader(s, protect)

	var out bytes.Buffer
	// Armor: 4/3 of the entity, plus line breaks and the packet overhead.
	out.Grow((len(inner)+len(body))*140/100 + 2048)
	for _, f := range s.outer {
		name, _, _ := bytes.Cut(f, []byte(":"))
		if n := strings.TrimSpace(string(name)); protect && (strings.EqualFold(n, "Subject") || subjectLike[strings.ToLower(n)]) {
			continue
		}
		out.Write(f)
	}
	if protect && s.subject {
		out.WriteString("Subject: " + obscuredSubject + "\r\n")
	}
	out.WriteString("MIME-Version: 1.0\r\n")
	out.WriteString("Content-Type: multipart/encrypted;\r\n protocol=\"application/pgp-encrypted\";\r\n boundary=\"" + boundary + "\"\r\n")
	out.WriteString("\r\nThis is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n")
	out.WriteString("--" + boundary + "\r\n")
	out.WriteString("Content-Type: application/pgp-encrypted\r\nContent-Description: PGP/MIME version identification\r\n\r\nVersion: 1\r\n\r\n")
	out.WriteString("--" + boundary + "\r\n")
	out.WriteString("Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n" +
		"Content-Description: OpenPGP encrypted message\r\nContent-Disposition: inline; filename=\"encrypted.asc\"\r\n\r\n")

	// With the CRC-24 footer, although RFC 9580 §6.1 drops it and it costs
	// a third of the time: GnuPG 2.2 (Debian 12) cannot read an armor
	// without it whose base64 ends without padding.
	aw, err := armor.Encode(sdk.CRLFWriter(&out), "PGP MESSAGE", nil)
	if err != nil {
		return nil, err
	}
	// Binary literal data: the entity is canonical CRLF text already and
	// must come back byte for byte.
	pw, err := openpgp.Encrypt(aw, keys, nil, &openpgp.FileHints{IsBinary: true}, nil)
	if err != nil {
		return nil, err
	}
	if _, err := pw.Write(inner); err != nil {
		return nil, err
	}
	if _, err := pw.Write(body); err != nil {
		return nil, err
	}
	if err := pw.Close(); err != nil {
		return nil, err
	}
	if err := aw.Close(); err != nil {
		return nil, err
	}
	out.WriteString("\r\n--" + boundary + "--\r\n")
	return out.Bytes(), nil
}
