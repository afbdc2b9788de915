package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mixmta/mixmta/sdk"
)

func TestDefaultConfigIsValidAndDocumented(t *testing.T) {
	c := defaults
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	s := sdk.SchemaOf(defaults)
	for key, p := range s.Properties {
		if p.Description == "" {
			t.Errorf("config key %s has no doc tag", key)
		}
	}
}

func TestConfigAllowReplacesTheDefaultList(t *testing.T) {
	c, err := sdk.DecodeConfig(defaults, []byte(`{"allow":["To","X-Keep"]}`))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.Allow, ",") != "To,X-Keep" {
		t.Fatalf("want allow [To X-Keep], got %v", c.Allow)
	}
	if strings.Join(defaults.Allow, ",") != "To,Subject,Newsgroups,References,In-Reply-To,MIME-Version,Content-Type,Content-Transfer-Encoding" {
		t.Fatalf("decoding changed the shared defaults: %v", defaults.Allow)
	}
}

func TestConfigAccepts(t *testing.T) {
	cases := []string{
		`{"from":"nobody@example.org"}`,
		`{"from":"\"Anon, the\" <anon@mix.example.org>"}`,
		`{"from":"=?UTF-8?Q?J=C3=B6rg?= <anon@example.org>"}`,
		`{"message_id_domain":"localhost"}`,
		`{"message_id_domain":"a-b.example.ORG"}`,
		`{"date_round":"0s","date_fuzz":"2d"}`,
		`{"envelope_sender":""}`,
		`{"envelope_sender":"bounces@mix.example.org"}`,
		`{"allow":[]}`,
		`{"allow":["Cc","Reply-To","X-Keep"]}`,
		`{"allow":["Content-Type","Content-ID","Content-Description"]}`,
		`{"add_headers":["Comments: This message was sent through an anonymous remailer"]}`,
	}
	for _, js := range cases {
		if _, err := sdk.DecodeConfig(defaults, []byte(js)); err != nil {
			t.Errorf("config %s: want accepted, got %v", js, err)
		}
	}
}

func TestConfigRejectsNamingTheKey(t *testing.T) {
	cases := []struct{ json, field string }{
		{`{"allow":null}`, "allow"},
		{`{"allow":["*"]}`, "allow.0"},
		{`{"allow":["To","From"]}`, "allow.1"},
		{`{"allow":["bcc"]}`, "allow.0"},
		{`{"allow":["Received"]}`, "allow.0"},
		{`{"allow":["Resent-From"]}`, "allow.0"},
		{`{"allow":["X-*-Y"]}`, "allow.0"},
		{`{"allow":["Content-*"]}`, "allow.0"},
		{`{"allow":["To","X-*"]}`, "allow.1"},
		{`{"allow":["Bad Name"]}`, "allow.0"},
		{`{"allow":["Sübject"]}`, "allow.0"},
		{`{"allow":[""]}`, "allow.0"},
		{`{"from":""}`, "from"},
		{`{"from":"not an address"}`, "from"},
		{`{"from":"Jörg <j@example.org>"}`, "from"},
		{`{"from":"a@example.org\r\nBcc: x@example.org"}`, "from"},
		{`{"from":"` + strings.Repeat("a", 990) + `@example.org"}`, "from"},
		{`{"message_id_domain":""}`, "message_id_domain"},
		{`{"message_id_domain":"exa mple.org"}`, "message_id_domain"},
		{`{"message_id_domain":"-bad.example.org"}`, "message_id_domain"},
		{`{"message_id_domain":"example..org"}`, "message_id_domain"},
		{`{"message_id_domain":"example.org>"}`, "message_id_domain"},
		{`{"message_id_domain":"` + strings.Repeat("a", 64) + `.org"}`, "message_id_domain"},
		{`{"date_round":"8d"}`, "date_round"},
		{`{"date_fuzz":"200h"}`, "date_fuzz"},
		{`{"envelope_sender":"<bounces@example.org>"}`, "envelope_sender"},
		{`{"envelope_sender":"Bounces <bounces@example.org>"}`, "envelope_sender"},
		{`{"envelope_sender":"bounces"}`, "envelope_sender"},
		{`{"envelope_sender":"bö@example.org"}`, "envelope_sender"},
		{`{"envelope_sender":"b@exa_mple.org"}`, "envelope_sender"},
		{`{"add_headers":["no colon here"]}`, "add_headers.0"},
		{`{"add_headers":["Comments: ok","From: x@example.org"]}`, "add_headers.1"},
		{`{"add_headers":["Subject: duplicate"]}`, "add_headers.0"},
		{`{"add_headers":["Content-Type: text/html"]}`, "add_headers.0"},
		{`{"add_headers":["X-A: one\r\nBcc: two"]}`, "add_headers.0"},
		{`{"add_headers":["X-A: caf\u00e9"]}`, "add_headers.0"},
		{`{"add_headers":["Bad Name: x"]}`, "add_headers.0"},
	}
	for _, c := range cases {
		_, err := sdk.DecodeConfig(defaults, []byte(c.json))
		var fe *sdk.FieldError
		if !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("config %s: want an error on key %s, got %v", c.json, c.field, err)
		}
	}
}

func TestConfigRejectsNegativeDurations(t *testing.T) {
	// JSON cannot carry one (sdk.ParseDuration refuses it); Validate must
	// still, for a Config built in Go.
	for _, key := range []string{"date_round", "date_fuzz"} {
		c := testConfig(t, nil)
		if key == "date_round" {
			c.DateRound = sdk.Duration(-time.Second)
		} else {
			c.DateFuzz = sdk.Duration(-time.Second)
		}
		var fe *sdk.FieldError
		if err := c.Validate(); !errors.As(err, &fe) || fe.Field != key {
			t.Errorf("negative %s: want an error on that key, got %v", key, err)
		}
	}
}
