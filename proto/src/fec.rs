//! How many proactive repair symbols follow a block's source symbols: a fixed share, or as
//! many as the receivers' reported loss calls for.

/// How many proactive repair symbols follow a block's source symbols.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fec {
    /// This share of the block's source symbols, whatever the loss.
    Fixed(f64),
    /// Enough for the lossiest active receiver (by the loss it last reported) to decode each
    /// block without a repair round, most of the time: the expected loss plus two standard
    /// deviations, and at least `floor` of the block. Repairs on request make up the rest.
    Auto {
        /// The least share.
        floor: f64,
    },
}

impl Fec {
    /// Proactive symbols for a block of `k` source symbols when receivers lose `loss`.
    pub fn proactive(self, k: u32, loss: f64) -> u32 {
        let k = k as f64;
        let r = match self {
            Self::Fixed(share) => k * share.max(0.0),
            Self::Auto { floor } => {
                let p = loss.clamp(0.0, 0.5);
                // Of k + r symbols sent, a receiver gets (k + r)(1 - p) on average, with a
                // standard deviation of sqrt((k + r) p (1 - p)): r covers the mean and two
                // deviations, k's deviation standing in for (k + r)'s.
                let sd = (k * p * (1.0 - p)).sqrt();
                (k * floor.max(0.0)).max((k * p + 2.0 * sd) / (1.0 - p))
            }
        };
        r.ceil() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proactive_repairs_follow_the_loss() {
        assert_eq!(Fec::Fixed(0.02).proactive(1000, 0.3), 20);
        let auto = Fec::Auto { floor: 0.005 };
        assert_eq!(auto.proactive(2954, 0.0), 15);
        // 5 % loss on 2954 symbols: 148 lost on average, sd 11.8; (148 + 23.7) / 0.95.
        assert_eq!(auto.proactive(2954, 0.05), 181);
        let mut last = 0;
        for pct in 0..=60 {
            let r = auto.proactive(2954, pct as f64 / 100.0);
            assert!(r >= last, "{pct} %: {r} < {last}");
            last = r;
        }
        // Loss beyond a half is capped: such a receiver is demoted, not served.
        assert_eq!(auto.proactive(100, 0.9), auto.proactive(100, 0.5));
    }
}
