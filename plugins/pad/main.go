// Command pad is a mixmta transformer that pads every message to a
// multiple of a block size (8 KiB by default) with one added header field,
// so an observer of the node's traffic learns only the size class.
package main

import "github.com/mixmta/mixmta/sdk"

func main() {
	sdk.Serve(sdk.Plugin[Config]{
		Name:    "pad",
		Version: "1.0.0",
		Doc:     "pad each message to a multiple of block bytes with an added header field; body and signatures untouched",
		Kinds:   []sdk.Kind{sdk.KindTransformer},
		Needs:   sdk.NeedHeader,
		Config:  defaults,
		New:     newStage,
	})
}
