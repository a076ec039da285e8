//! Choosing the next token: penalties, then greedy (temperature 0) or
//! temperature with top-k, top-p and min-p, from a seeded generator so a
//! seed reproduces a run.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off; divides positive logits (multiplies negative) of recent tokens.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub repeat_last_n: usize,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        // llama-server's defaults.
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0x5eed,
        }
    }
}

/// SplitMix64: small, fast, and the same on every platform.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[derive(Debug, Clone)]
pub struct Sampler {
    pub cfg: SamplerConfig,
    rng: Rng,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Self {
        let rng = Rng::new(cfg.seed);
        Sampler { cfg, rng }
    }

    /// Pick a token from `logits` given the tokens so far (for penalties).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.penalize(logits, history);
        if self.cfg.temperature <= 0.0 {
            return argmax(logits) as u32;
        }
        let (cand, probs) = self.choices(logits, true);
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.next_f32() * total;
        for ((id, _), p) in cand.iter().zip(&probs) {
            if r < *p {
                return *id;
            }
            r -= p;
        }
        cand.last().map(|c| c.0).unwrap_or(0)
    }

    /// The tokens left after top-k, min-p and top-p, most likely first,
    /// with their probabilities (the softmax at the temperature over the
    /// top-k, or over all tokens with top-k off).
    ///
    /// With top-k off, min-p alone bounds the choice: a token whose
    /// exp((l - max) / t) is under min_p is cut anyway, so only logits
    /// from max + t ln(min_p) (less a margin for rounding) are sorted
    /// (`prefilter`), the rest only summed. Sorting all 128k of a
    /// vocabulary was 5 ms a token.
    fn choices(&self, logits: &[f32], prefilter: bool) -> (Vec<(u32, f32)>, Vec<f32>) {
        let t = self.cfg.temperature;
        let max = crate::kernels::max_values(logits);
        let floor =
            (prefilter && self.cfg.top_k == 0 && self.cfg.min_p > 0.0).then(|| max + t * (self.cfg.min_p.ln() - 1e-3));
        let (mut cand, cut) = candidates(logits, self.cfg.top_k, floor);
        let weight = |l: f32| ((l - max) / t).exp();
        let mut probs: Vec<f32> = cand.iter().map(|(_, l)| weight(*l)).collect();
        let sum: f32 = probs.iter().sum::<f32>() + cut.iter().map(|&l| weight(l)).sum::<f32>();
        probs.iter_mut().for_each(|p| *p /= sum);
        if self.cfg.min_p > 0.0 {
            let floor = probs[0] * self.cfg.min_p;
            let keep = probs.iter().take_while(|&&p| p >= floor).count().max(1);
            cand.truncate(keep);
            probs.truncate(keep);
        }
        if self.cfg.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep);
            probs.truncate(keep);
        }
        (cand, probs)
    }

    fn penalize(&self, logits: &mut [f32], history: &[u32]) {
        let c = &self.cfg;
        if c.repeat_penalty == 1.0 && c.presence_penalty == 0.0 && c.frequency_penalty == 0.0 {
            return;
        }
        let recent = &history[history.len().saturating_sub(c.repeat_last_n)..];
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &t in recent {
            *counts.entry(t).or_default() += 1;
        }
        for (&t, &n) in &counts {
            let Some(l) = logits.get_mut(t as usize) else { continue };
            if c.repeat_penalty != 1.0 {
                *l = if *l > 0.0 { *l / c.repeat_penalty } else { *l * c.repeat_penalty };
            }
            *l -= c.frequency_penalty * n as f32 + c.presence_penalty;
        }
    }
}

/// The tokens in order of logit, highest first (ties by id), the first
/// `top_k` of them (0: all), and those at or above `floor` only where one
/// is given; then the logits left out by the floor (not by top-k). With
/// top-k, the k are selected first and only they are sorted.
fn candidates(logits: &[f32], top_k: usize, floor: Option<f32>) -> (Vec<(u32, f32)>, Vec<f32>) {
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if floor.is_none() && top_k > 0 && top_k * KEPT_PER_K < logits.len() {
        let mut cand = top_k_streamed(logits, top_k, order);
        cand.sort_unstable_by(order);
        return (cand, Vec::new());
    }
    let (mut cand, mut cut) = (Vec::new(), Vec::new());
    match floor {
        Some(floor) => {
            for (i, &l) in logits.iter().enumerate() {
                if l >= floor {
                    cand.push((i as u32, l));
                } else {
                    cut.push(l);
                }
            }
        }
        None => cand = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect(),
    }
    if top_k > 0 && top_k < cand.len() {
        cand.select_nth_unstable_by(top_k - 1, order);
        cand.truncate(top_k);
    }
    cand.sort_unstable_by(order);
    (cand, cut)
}

/// How many candidates `top_k_streamed` holds (per k) before it cuts
/// them back to k.
const KEPT_PER_K: usize = 4;

/// The first k of the logits in `order` (unsorted), in one pass: a logit
/// is kept only if it beats the k-th best kept so far (a tie loses: its id
/// is higher), and the kept are cut back to the best k whenever there are
/// `KEPT_PER_K` x k of them. Gathering all 128k of a vocabulary and
/// selecting among them took 0.3 ms a token, on the batcher's thread.
fn top_k_streamed(
    logits: &[f32],
    k: usize,
    order: impl Fn(&(u32, f32), &(u32, f32)) -> std::cmp::Ordering + Copy,
) -> Vec<(u32, f32)> {
    let mut kept: Vec<(u32, f32)> = Vec::with_capacity(KEPT_PER_K * k);
    let cut_back = |kept: &mut Vec<(u32, f32)>| {
        if kept.len() > k {
            kept.select_nth_unstable_by(k - 1, order);
            kept.truncate(k);
        }
    };
    // The k-th best logit kept, once k are kept.
    let mut bar = f32::NEG_INFINITY;
    let mut full = false;
    // Once the bar stands, most runs of logits hold none above it: each
    // run is first checked whole (branch-free, so in vector lanes) and
    // only a run with one above the bar is gone through value by value.
    // (Value by value throughout was 0.1 ms over 128k logits.)
    for (r, run) in logits.chunks(RUN).enumerate() {
        if full && !run.iter().fold(false, |any, l| any | l.total_cmp(&bar).is_gt()) {
            continue;
        }
        for (i, &l) in run.iter().enumerate() {
            if !full || l.total_cmp(&bar).is_gt() {
                kept.push(((r * RUN + i) as u32, l));
                if kept.len() == KEPT_PER_K * k {
                    cut_back(&mut kept);
                    bar = kept[k - 1].1;
                    full = true;
                }
            }
        }
    }
    cut_back(&mut kept);
    kept
}

/// Logits `top_k_streamed` checks against its bar at once.
const RUN: usize = 64;

/// The first position of the largest value (NaN never is; 0 when there
/// is none): the maximum in vector lanes, then its first position. One
/// compare-and-branch per value through a running best took 0.05 ms over
/// a 128k vocabulary, a sequence at a time on the batcher's thread.
pub fn argmax(v: &[f32]) -> usize {
    let max = crate::kernels::max_values(v);
    v.iter().position(|&x| x == max).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.9, -1.0, 0.5]
    }

    #[test]
    fn greedy_takes_the_largest_and_penalties_can_move_it() {
        let mut s = Sampler::new(SamplerConfig { temperature: 0.0, ..Default::default() });
        assert_eq!(s.sample(&mut logits(), &[]), 1);
        let mut s = Sampler::new(SamplerConfig { temperature: 0.0, repeat_penalty: 1.5, ..Default::default() });
        assert_eq!(s.sample(&mut logits(), &[1]), 2);
        let mut s = Sampler::new(SamplerConfig { temperature: 0.0, presence_penalty: 5.0, ..Default::default() });
        let mut l = logits();
        assert_eq!(s.sample(&mut l, &[1, 2]), 0);
        assert_eq!(l[1], -2.0);
    }

    /// The first of equal largest values wins, NaN never, wherever they
    /// fall among the vector lanes and the tail.
    #[test]
    fn argmax_is_the_first_largest() {
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
        for len in [1usize, 15, 16, 17, 40, 1000] {
            for at in [0, len / 3, len - 1] {
                let mut v: Vec<f32> = (0..len).map(|i| (i % 7) as f32 - 3.0).collect();
                v[at] = 9.0;
                assert_eq!(argmax(&v), at, "{len} values, largest at {at}");
                v[len - 1] = 9.0;
                v[0] = f32::NAN;
                let first = if at == 0 { len - 1 } else { at };
                assert_eq!(argmax(&v), first, "{len} values, largest at {at} and at the end");
            }
        }
    }

    /// Top-k (streamed where k is small, by selection otherwise) gives
    /// the k largest in the order a full sort gives them (ties by id), for
    /// every k: over many ties, and over rising and falling logits (each
    /// one beats the kept / none does).
    #[test]
    fn top_k_candidates_are_the_full_sorts_first_k() {
        let mut rng = Rng::new(9);
        // Few distinct values, so there are many ties.
        let ties: Vec<f32> = (0..3000).map(|_| (rng.next_f32() * 50.0).floor() - 25.0).collect();
        let rising: Vec<f32> = (0..3000).map(|i| i as f32 * 0.01).collect();
        let falling: Vec<f32> = rising.iter().rev().copied().collect();
        for (what, logits) in [("ties", ties), ("rising", rising), ("falling", falling)] {
            let mut full: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
            full.sort_by(|a, b| b.1.total_cmp(&a.1));
            assert_eq!(candidates(&logits, 0, None), (full.clone(), vec![]));
            for k in [1usize, 2, 40, 59, 749, 750, 2999, 3000, 5000] {
                assert_eq!(candidates(&logits, k, None).0, full[..k.min(full.len())], "{what}: top {k}");
            }
        }
    }

    /// With top-k off, sorting only the logits min-p can keep leaves the
    /// same tokens as sorting all, with the same probabilities (up to the
    /// order their sum is taken in): min-p cuts at the same place, and
    /// top-p, whose sums include the cut tokens' weight, too.
    #[test]
    fn min_p_without_top_k_sorts_only_what_it_can_keep_and_keeps_the_same() {
        let mut rng = Rng::new(4);
        for round in 0..40 {
            let logits: Vec<f32> = (0..5000).map(|_| (rng.next_f32() * 2.0 - 1.0) * (1 + round % 7) as f32).collect();
            for (temperature, min_p, top_p) in [(0.8, 0.05, 0.95), (1.0, 0.01, 1.0), (0.3, 0.2, 0.5), (1.5, 0.001, 0.9)]
            {
                let s = Sampler::new(SamplerConfig { temperature, top_k: 0, min_p, top_p, ..Default::default() });
                let (all, p_all) = s.choices(&logits, false);
                let (few, p_few) = s.choices(&logits, true);
                let ids = |c: &[(u32, f32)]| c.iter().map(|c| c.0).collect::<Vec<_>>();
                let what = format!("round {round}, t {temperature}, min_p {min_p}, top_p {top_p}");
                assert_eq!(ids(&few), ids(&all), "{what}");
                assert!(p_few.iter().zip(&p_all).all(|(a, b)| (a - b).abs() <= 1e-4 * b), "{what}");
                let floor = (1..few.len()).find(|&i| few[i].1 < few[0].1 + temperature * min_p.ln());
                assert_eq!(floor, None, "{what}: a kept token under min-p");
            }
        }
        // The prefilter sorts far fewer than all.
        let logits: Vec<f32> = (0..128_000).map(|_| rng.next_f32() * 20.0).collect();
        let max = logits.iter().fold(f32::MIN, |a, &b| a.max(b));
        let floor = max + 0.8 * (0.05f32.ln() - 1e-3);
        let (few, cut) = candidates(&logits, 0, Some(floor));
        assert!(few.len() < 128_000 / 5 && few.len() + cut.len() == 128_000, "{} sorted", few.len());
        assert!(few.iter().all(|c| c.1 >= floor) && cut.iter().all(|&l| l < floor));
    }

    #[test]
    fn a_seed_reproduces_a_run_and_filters_bound_the_choice() {
        let run = |seed| {
            let mut s = Sampler::new(SamplerConfig {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed,
                ..Default::default()
            });
            (0..200).map(|_| s.sample(&mut logits(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert!(run(7).contains(&3), "with no filters every token can come out");
        let mut s = Sampler::new(SamplerConfig { temperature: 1.0, top_k: 2, ..Default::default() });
        assert!((0..200).all(|_| matches!(s.sample(&mut logits(), &[]), 1 | 2)));
        let mut s =
            Sampler::new(SamplerConfig { temperature: 1.0, top_k: 0, top_p: 0.4, min_p: 0.0, ..Default::default() });
        assert!((0..200).all(|_| s.sample(&mut logits(), &[]) == 1));
        let mut s =
            Sampler::new(SamplerConfig { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.5, ..Default::default() });
        assert!((0..200).all(|_| matches!(s.sample(&mut logits(), &[]), 1 | 2)));
    }
}
