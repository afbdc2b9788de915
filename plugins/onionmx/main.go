// Command onionmx is a mixmta delivery stage: it hands each message over
// SMTP (RFC 5321) to a smarthost or to the recipient domains' MX hosts,
// optionally through a SOCKS5 proxy (Tor) with per-destination stream
// isolation and DNS over TCP through the same proxy, with a STARTTLS
// policy, per-recipient results and pooled connections.
package main

import (
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// defaults are the config values when a key is absent. Timeouts follow
// RFC 5321 §4.5.3.2 in spirit but are shorter, so a stuck peer does not
// hold a delivery slot for the RFC's 5-10 minutes; connect is generous
// enough for a Tor circuit.
var defaults = Config{
	Port:           25,
	TLS:            tlsMay,
	HELO:           "mixmta.invalid",
	ConnectTimeout: sdk.Duration(60 * time.Second),
	CommandTimeout: sdk.Duration(2 * time.Minute),
	DataTimeout:    sdk.Duration(5 * time.Minute),
	DNSTimeout:     sdk.Duration(30 * time.Second),
	IdleTimeout:    sdk.Duration(30 * time.Second),
	MaxIdle:        2,
	SRV:            true,
	Circuits:       1,
	Pipelining:     true,
}

func main() {
	sdk.Serve(sdk.Plugin[Config]{
		Name:    "onionmx",
		Version: "0.1.0",
		Doc:     "deliver over SMTP to a relay host or the recipient's MX, optionally through SOCKS5/Tor",
		Kinds:   []sdk.Kind{sdk.KindDeliverer},
		Needs:   sdk.NeedHeader | sdk.NeedBodyStream,
		Config:  defaults,
		New: func(c Config, env sdk.Env) (any, error) {
			return newDeliverer(c, env.Logger)
		},
	})
}
