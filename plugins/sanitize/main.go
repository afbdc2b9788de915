// Command sanitize is the exit node's header sanitizer: a mixmta Transformer
// that keeps only allow-listed header fields, replaces From, Date and
// Message-ID, and sets the envelope sender. It never sees the body.
package main

import (
	"time"

	"github.com/mixmta/mixmta/sdk"
)

// defaults is the config a stage gets for every key it does not set.
// README.md explains each choice.
var defaults = Config{
	Allow: []string{
		"To", "Subject", "Newsgroups", "References", "In-Reply-To",
		"MIME-Version", "Content-Type", "Content-Transfer-Encoding",
	},
	From:            "Anonymous <nobody@anonymous.invalid>",
	MessageIDDomain: "anonymous.invalid",
	DateRound:       sdk.Duration(time.Hour),
	DateFuzz:        0,
	EnvelopeSender:  "",
	AddHeaders:      []string{},
}

func main() {
	sdk.Serve(sdk.Plugin[Config]{
		Name:    "sanitize",
		Version: "1.0.0",
		Doc:     "exit-node header sanitizer: allow-listed fields only; new From, Date, Message-ID and envelope sender",
		Kinds:   []sdk.Kind{sdk.KindTransformer},
		Needs:   sdk.NeedHeader,
		// The core runs this stage before a mixnet router only because
		// it reports this.
		Capabilities: []sdk.Capability{sdk.CapSanitizes},
		Config:       defaults,
		New:          newStage,
	})
}
