package daemon

import (
	"syscall"
)

// freeBytes returns the bytes an unprivileged writer may still use on the
// filesystem holding dir (statfs f_bavail × f_bsize).
func freeBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// HasSpace implements smtpd.SpaceChecker: size more bytes fit above
// queue.free_space_reserve on the data dir's filesystem. The queue may
// take about twice a message's size until value-log GC runs (the item and
// the blobs a transform writes), hence the factor. A statfs error counts
// as no space: refusing with 452 loses nothing, a write into a full
// filesystem may crash the queue.
func (d *Daemon) HasSpace(size int64) bool {
	reserve := d.cfg.Queue.FreeSpaceReserve
	if reserve <= 0 {
		return true
	}
	free, err := freeBytes(d.cfg.DataDir)
	low := err != nil || free < reserve
	if d.spaceLow.Swap(low) != low {
		if low {
			d.log.Warn("[QUEUE] free space below the reserve; MAIL and DATA get 452 4.3.1, queued mail is still delivered", "free", free, "reserve", reserve, "error", err)
		} else {
			d.log.Info("[QUEUE] free space is above the reserve again; accepting mail", "free", free, "reserve", reserve)
		}
	}
	return !low && free-2*size >= reserve
}

// QueueFull implements smtpd.QueueChecker: the queue holds
// queue.max_items (0: no limit), on a mix node smtpLimit of it. It logs
// when the queue fills and when it has room again.
func (d *Daemon) QueueFull() bool {
	limit := d.cfg.Queue.MaxItems
	if limit <= 0 {
		return false
	}
	if d.cfg.Mix != nil {
		limit = smtpLimit(limit)
	}
	n := d.engine.Queued()
	full := n >= limit
	if d.queueFull.Swap(full) != full {
		if full {
			d.log.Warn("[QUEUE] queue full; MAIL, RCPT and DATA get 451 4.3.2 until deliveries make room", "items", n, "max_items", limit)
		} else {
			d.log.Info("[QUEUE] queue has room again; accepting mail", "items", n, "max_items", limit)
		}
	}
	return full
}

// linkFull is the mix node's Config.Full: the queue holds queue.max_items
// messages (packets in transit and exit fragments aside, docs/mixnet.md
// "Flow control") counting pending more, or the data dir is below its
// free-space reserve. While it is, the node refuses every packet from its
// links with the full word. It logs when the node fills and when it has
// room again.
func (d *Daemon) linkFull(pending int64) bool {
	limit := d.cfg.Queue.MaxItems
	room := d.HasSpace(0)
	// Logged for the messages queued only: the pending packets come and
	// go with every batch.
	if full := d.engine.Full() || !room; d.mixFull.Swap(full) != full {
		if full {
			d.log.Warn("[MIX] node full; packets from links are refused (full) until deliveries make room", "messages", d.engine.Messages(), "max_items", d.cfg.Queue.MaxItems)
		} else {
			d.log.Info("[MIX] node has room again; accepting packets from links", "messages", d.engine.Messages(), "max_items", d.cfg.Queue.MaxItems)
		}
	}
	return !room || limit > 0 && d.engine.Messages()+pending >= limit
}

// smtpLimit is the part of queue.max_items SMTP may fill on a mix node:
// three quarters, at least one item below it (for max_items >= 2). The
// rest is kept for what the mixnet brings (messages reassembled at this
// exit, bounces), so that mail waiting to enter the mixnet (held while
// too few nodes are healthy) never by itself makes the node full for its
// links: a node is full only with messages that leave it by delivery,
// whatever its peers do, and full nodes can never wait on each other
// (docs/mixnet.md, "Flow control").
func smtpLimit(maxItems int64) int64 {
	return max(1, maxItems-max(1, maxItems/4))
}
