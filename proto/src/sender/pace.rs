//! The sender's pace: demoting the few receivers that hold the stream back, and slowing the
//! stream down when the group as a whole cannot keep up.

use super::*;

impl Sender {
    /// Demotes the receivers that alone keep the window from moving.
    pub(super) fn check_stall(&mut self, now: Instant) {
        let full = self.window_full() || self.frontier == self.layout.chunks();
        if !full || self.base >= self.frontier {
            self.stalled_since = None;
            return;
        }
        let since = *self.stalled_since.get_or_insert(now);
        if now < since + self.cfg.stall_timeout {
            return;
        }
        let base = self.base;
        let holding: Vec<u32> = self
            .receivers
            .values()
            .filter(|r| r.state == ReceiverState::Active && !r.has(base))
            .map(|r| r.id)
            .collect();
        self.stalled_since = None;
        if !self.is_minority(holding.len()) {
            // Most of the group is behind: the stream is too fast for it, not one machine
            // too slow. Back off instead of demoting everyone.
            self.last_decrease = None;
            self.slow_down(now, "group stalled");
            // The repair cap bounds what one broken receiver costs; a block the group waits
            // on is the group's need. Without another round, a block whose repairs were all
            // lost (a starved sender, a burst) would hold the window for good.
            if let Some(c) = self.window.front_mut() {
                for b in &mut c.blocks {
                    if b.assigned >= b.cap() {
                        b.rounds += 1;
                    }
                }
            }
            return;
        }
        for id in holding {
            self.demote(id, DemoteReason::Stalled);
        }
        self.release_window(now);
    }

    /// Whether `n` more receivers are few enough to be demoted: with those demoted already,
    /// under a quarter of the group (every receiver but the dead), or any of three or fewer
    /// still active (where no majority can vouch for the stream). Many receivers in trouble
    /// point at the sender or the network, and so do many in turn: a group that all lags
    /// (forty agents on two CPUs) would otherwise be demoted a quarter at a time until every
    /// machine finished over unicast, each fetching its own copy of the rest.
    pub(super) fn is_minority(&self, n: usize) -> bool {
        let (mut active, mut demoted, mut group) = (0, 0, 0);
        for r in self.receivers.values() {
            match r.state {
                ReceiverState::Active => active += 1,
                ReceiverState::Demoted => demoted += 1,
                ReceiverState::Finished => {}
                ReceiverState::Dead => continue,
            }
            group += 1;
        }
        active <= 3 || (demoted + n) * 4 < group
    }

    /// Cuts the send rate by 30 % (at most once per [`DECREASE_INTERVAL`]): the group, not
    /// one machine, cannot keep up.
    pub(super) fn slow_down(&mut self, now: Instant, why: &'static str) {
        if self
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < DECREASE_INTERVAL)
        {
            return;
        }
        let min = self.cfg.min_rate_bps.clamp(1, self.cfg.rate_bps.max(1));
        self.rate_bps = ((self.rate_bps as f64 * 0.7) as u64).max(min);
        self.bucket.set_rate(self.rate_bps);
        self.last_decrease = Some(now);
        debug!(rate_bps = self.rate_bps, why, "slowing down");
    }

    /// Backs off when the median receiver sees its queue grow; creeps back up otherwise.
    pub(super) fn control_rate(&mut self, now: Instant) {
        let mut delays: Vec<u32> = self
            .receivers
            .values()
            .filter(|r| {
                r.state == ReceiverState::Active
                    && r.feedback_at
                        .is_some_and(|t| now.saturating_duration_since(t) < 4 * TICK)
            })
            .map(|r| r.delay_us)
            .collect();
        if delays.is_empty() {
            return;
        }
        delays.sort_unstable();
        let median = Duration::from_micros(delays[delays.len() / 2] as u64);
        let max = self.cfg.rate_bps.max(1);
        let min = self.cfg.min_rate_bps.clamp(1, max);
        let new = if median > self.cfg.delay_target {
            if self
                .last_decrease
                .is_some_and(|t| now.saturating_duration_since(t) < DECREASE_INTERVAL)
            {
                return;
            }
            self.last_decrease = Some(now);
            ((self.rate_bps as f64 * 0.85) as u64).max(min)
        } else {
            (self.rate_bps + max / 50).min(max)
        };
        if new != self.rate_bps {
            debug!(rate_bps = new, median_delay = ?median, "send rate");
            self.rate_bps = new;
            self.bucket.set_rate(new);
        }
    }
}
