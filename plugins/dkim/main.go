// Command dkim is a mixmta transform stage that adds a DKIM signature
// (RFC 6376) to each message: ed25519-sha256 (RFC 8463) or rsa-sha256 by
// the key, relaxed/relaxed canonicalization, an explicit list of signed
// and oversigned header fields. It belongs at the exit, after sanitizing.
package main

import (
	"github.com/mixmta/mixmta/sdk"
)

// defaults are the config values when a key is absent (domain, selector
// and key_file are required). The header lists follow RFC 6376 §5.4.1;
// oversigning the fields a reader sees keeps anyone on the path from
// adding a second instance of them (§8.15).
var defaults = Config{
	Headers: []string{"From", "Reply-To", "Subject", "Date", "Message-ID", "To", "Cc",
		"MIME-Version", "Content-Type", "Content-Transfer-Encoding",
		"In-Reply-To", "References", "Newsgroups"},
	Oversign: []string{"From", "Reply-To", "Subject", "Date", "Message-ID", "To", "Cc",
		"MIME-Version", "Content-Type", "Content-Transfer-Encoding"},
}

func main() {
	sdk.Serve(sdk.Plugin[Config]{
		Name:    "dkim",
		Version: "0.1.0",
		Doc:     "sign with DKIM (ed25519-sha256 or rsa-sha256, relaxed/relaxed)",
		Kinds:   []sdk.Kind{sdk.KindTransformer},
		Needs:   sdk.NeedAll,
		Config:  defaults,
		New: func(c Config, env sdk.Env) (any, error) {
			return newDKIM(c, env.Logger)
		},
	})
}
