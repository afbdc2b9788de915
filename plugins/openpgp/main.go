// Command openpgp is a mixmta routing stage for local delivery (fogmail)
// that encrypts each message to its recipient's OpenPGP key as PGP/MIME
// (RFC 3156) with github.com/ProtonMail/go-crypto, one copy per recipient,
// so mail is stored only in a form its recipient alone can read.
package main

import (
	"github.com/mixmta/mixmta/sdk"
)

// defaults are the config values when a key is absent (keys_dir is
// required).
var defaults = Config{
	MissingKey:     policyHold,
	ProtectSubject: true,
}

func main() {
	sdk.Serve(sdk.Plugin[Config]{
		Name:    "openpgp",
		Version: "0.1.0",
		Doc:     "encrypt each recipient's copy to its OpenPGP key as PGP/MIME (RFC 3156)",
		Kinds:   []sdk.Kind{sdk.KindRouter},
		Needs:   sdk.NeedAll,
		Config:  defaults,
		New: func(c Config, env sdk.Env) (any, error) {
			return newStage(c, env.Logger)
		},
	})
}
