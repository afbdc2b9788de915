package main

import (
	"errors"
	"testing"

	"github.com/mixmta/mixmta/sdk"
)

func TestConfigValidationNamesTheKey(t *testing.T) {
	cases := []struct {
		json string
		key  string // "" = valid
	}{
		{`{}`, ""},
		{`{"relay_host":"127.0.0.1:2525","tls":"require"}`, ""},
		{`{"relay_host":"smarthost.example"}`, ""},
		{`{"relay_host":"[2001:db8::1]:25"}`, ""},
		{`{"relay_host":"a b:25"}`, "relay_host"},
		{`{"relay_host":"host:99999"}`, "relay_host"},
		{`{"port":0}`, "port"},
		{`{"resolver":"127.0.0.1:5353"}`, ""},
		{`{"resolver":"127.0.0.1"}`, ""},
		{`{"resolver":"dns.example:53"}`, "resolver"},
		{`{"socks5":"127.0.0.1:9050","resolver":"127.0.0.1:53"}`, ""},
		{`{"socks5":"127.0.0.1:9050"}`, "resolver"},
		{`{"socks5":"127.0.0.1:9050","relay_host":"abc.onion:25"}`, ""},
		{`{"socks5":"127.0.0.1"}`, "socks5"},
		{`{"tls":"maybe"}`, "tls"},
		{`{"tls_verify":true}`, "tls_verify"},
		{`{"tls":"require","tls_verify":true}`, ""},
		{`{"tls":"require","tls_verify":true,"tls_ca_file":"/nonexistent.pem"}`, "tls_ca_file"},
		{`{"tls":"require","tls_ca_file":"/etc/hostname"}`, "tls_ca_file"},
		{`{"helo":"exit.example.org"}`, ""},
		{`{"helo":"[192.0.2.1]"}`, ""},
		{`{"helo":"two words"}`, "helo"},
		{`{"helo":""}`, "helo"},
		{`{"helo":"-bad.example"}`, "helo"},
		{`{"command_timeout":"10ms"}`, "command_timeout"},
		{`{"idle_timeout":"0s"}`, "idle_timeout"},
		{`{"max_idle":-1}`, "max_idle"},
	}
	for _, c := range cases {
		_, err := sdk.DecodeConfig(defaults, []byte(c.json))
		var fe *sdk.FieldError
		switch {
		case c.key == "" && err != nil:
			t.Errorf("%s: want valid, got %v", c.json, err)
		case c.key != "" && (!errors.As(err, &fe) || fe.Field != c.key):
			t.Errorf("%s: want an error on key %s, got %v", c.json, c.key, err)
		}
	}
}

func TestDefaultsNeverSayLocalhostAndUseOpportunisticTLS(t *testing.T) {
	if defaults.HELO == "" || defaults.HELO == "localhost" || defaults.TLS != tlsMay || defaults.Port != 25 {
		t.Fatalf("defaults: helo %q tls %q port %d", defaults.HELO, defaults.TLS, defaults.Port)
	}
	if err := (&Config{}).Validate(); err == nil {
		t.Fatalf("a zero config (no defaults) validated")
	}
}
