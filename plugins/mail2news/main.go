// Command mail2news is a mixmta delivery stage that turns mail into a
// Usenet article (RFC 5536) and posts it to news servers with NNTP POST or
// IHAVE (RFC 3977), optionally through SOCKS5 (Tor), or forwards the
// article by mail to an external mail2news gateway.
package main

import (
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// defaults are the config values when a key is absent; README.md explains
// each choice.
var defaults = Config{
	PathHost:        "mail2news.invalid",
	From:            "Anonymous <nobody@anonymous.invalid>",
	MessageIDDomain: "anonymous.invalid",
	MaxBytes:        200 * 1024,
	MaxGroups:       3,
	AddressPast:     sdk.Duration(48 * time.Hour),
	AddressFuture:   sdk.Duration(24 * time.Hour),
	PostTo:          postToEach,
	ConnectTimeout:  sdk.Duration(60 * time.Second),
	CommandTimeout:  sdk.Duration(2 * time.Minute),
	MaxIdle:         2,
	IdleTimeout:     sdk.Duration(30 * time.Second),
}

func main() {
	sdk.Serve(sdk.Plugin[Config]{
		Name:    "mail2news",
		Version: "0.1.0",
		Doc:     "turn mail into a Usenet article and post it by NNTP (POST or IHAVE, optionally over SOCKS5/Tor) or forward it to a mail2news gateway",
		Kinds:   []sdk.Kind{sdk.KindDeliverer},
		Needs:   sdk.NeedAll,
		Config:  defaults,
		New: func(c Config, env sdk.Env) (any, error) {
			return newGateway(c, env.Logger)
		},
	})
}
