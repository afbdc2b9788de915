package daemon

import (
	"encoding/json"
	"fmt"

	"github.com/mixmta/mixmta/core/internal/config"
	"github.com/mixmta/mixmta/internal/pluginclient"
	"github.com/mixmta/mixmta/sdk"
)

// PacketSizeKey is the config key of a mixer plugin (one that offers the
// mixer kind) that holds its packet size in bytes. The mix section's
// packet_size is the only source of the value: the transport frames
// packets of that size, so a mixer that built or accepted any other size
// would have every packet refused.
const PacketSizeKey = "packet_size"

// mixStageConfig sets PacketSizeKey of a stage whose plugin offers the
// mixer kind and declares the key to mix.packet_size, and refuses a stage
// that sets it to another value. Without a mix section js is returned
// unchanged (the plugin's own default applies).
func mixStageConfig(cfg *config.Config, st config.Stage, info pluginclient.Info, js []byte) ([]byte, error) {
	if cfg.Mix == nil || !info.Has(sdk.KindMixer) || info.Schema == nil || info.Schema.Properties[PacketSizeKey] == nil {
		return js, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(js, &m); err != nil {
		return nil, err
	}
	if m == nil {
		m = map[string]json.RawMessage{}
	}
	if v, ok := m[PacketSizeKey]; ok {
		var set int
		if json.Unmarshal(v, &set) != nil || set != cfg.Mix.PacketSize {
			return nil, fmt.Errorf("%s:%d: stage %q: %s %s differs from mix.packet_size %d (every packet on the wire has that size); remove it from the stage, the mix section sets it",
				cfg.Path, st.KeyLine(PacketSizeKey), st.Name, PacketSizeKey, v, cfg.Mix.PacketSize)
		}
	}
	m[PacketSizeKey], _ = json.Marshal(cfg.Mix.PacketSize)
	return json.Marshal(m)
}
