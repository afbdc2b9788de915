// Command maildir is a mixmta delivery stage that stores each message in a
// Maildir (cr.yp.to/proto/maildir.html): written to tmp/, fsync'd, linked
// into new/, with new/ fsync'd before the delivery counts. Path components
// come from the recipient address only after strict checks, through an
// os.Root, so no address can write outside the configured root.
package main

import (
	"github.com/mixmta/mixmta/sdk"
)

// defaults are the config values when a key is absent (path is required).
var defaults = Config{
	Layout: layoutRecipient,
}

func main() {
	sdk.Serve(sdk.Plugin[Config]{
		Name:    "maildir",
		Version: "0.1.0",
		Doc:     "deliver into Maildir directories (tmp/ -> fsync -> new/)",
		Kinds:   []sdk.Kind{sdk.KindDeliverer},
		Needs:   sdk.NeedHeader | sdk.NeedBodyStream,
		Config:  defaults,
		New: func(c Config, env sdk.Env) (any, error) {
			return newMaildir(c, env.Logger)
		},
	})
}
