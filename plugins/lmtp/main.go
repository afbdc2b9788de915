// Command lmtp is a mixmta delivery stage that hands each message to an
// LMTP server (RFC 2033), such as Dovecot's lmtp service, over a Unix
// socket or TCP, and reports the server's reply for each recipient as that
// recipient's own result.
package main

import (
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// defaults are the config values when a key is absent (address is
// required).
var defaults = Config{
	LHLOName:       "localhost",
	ConnectTimeout: sdk.Duration(30 * time.Second),
	Timeout:        sdk.Duration(5 * time.Minute),
}

func main() {
	sdk.Serve(sdk.Plugin[Config]{
		Name:    "lmtp",
		Version: "0.1.0",
		Doc:     "deliver over LMTP (RFC 2033) to Dovecot or any LMTP server, one result per recipient",
		Kinds:   []sdk.Kind{sdk.KindDeliverer},
		Needs:   sdk.NeedAll,
		Config:  defaults,
		New: func(c Config, env sdk.Env) (any, error) {
			return newLMTP(c, env.Logger), nil
		},
	})
}
