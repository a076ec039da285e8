use super::*;
use crate::sampler::Rng;

pub(super) fn random(rng: &mut Rng, n: usize, spread: f32) -> Vec<f32> {
    (0..n).map(|_| (rng.next_f32() * 2.0 - 1.0) * spread).collect()
}

/// Every build this CPU runs, beside the baseline build of the blocked
/// loop: (name, attention).
type Build<T> = (&'static str, fn(Queries, KvHead<T>, f32, &mut Vec<f32>, &mut [f32]));

fn builds<T: KvElem>() -> Vec<Build<T>> {
    let b: Vec<Build<T>> = vec![("blocked scalar", attend_scalar::<T>), ("dispatched", attend::<T>)];
    #[cfg(target_arch = "x86_64")]
    let b = {
        let mut b = b;
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            // SAFETY: AVX2, FMA and F16C checked.
            b.push(("avx2", |q, kv, s, sc, o| unsafe { x86::attend_avx2(q, kv, s, sc, o) }));
        }
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512 F checked.
            b.push(("avx512", |q, kv, s, sc, o| unsafe { x86::attend_avx512(q, kv, s, sc, o) }));
        }
        b
    };
    b
}

/// The calls the model makes: one token decoding over n positions, and
/// `m` new tokens after `cached` ones (a prompt chunk, a cached turn),
/// each seeing its own position and those before it.
pub(super) fn shapes() -> Vec<Vec<usize>> {
    let mut v = vec![];
    for n in [1usize, 2, 5, 17, 33, 100, 301] {
        v.push(vec![n]);
    }
    for (cached, m) in [(0usize, 1usize), (0, 7), (5, 3), (90, 6), (250, 2), (31, 9)] {
        v.push((cached + 1..=cached + m).collect());
    }
    v
}

fn check_builds<T: KvElem>(to_cache: impl Fn(&[f32]) -> Vec<T>, what: &str) {
    let mut rng = Rng::new(23);
    let mut scores = vec![f32::NAN; 3];
    for hd in [40usize, 64, 128] {
        // The head read is the middle one of three: a read of a neighbour's
        // values shows.
        let stride = 3 * hd;
        for heads in [1usize, 2, 3, 4, 5] {
            for visible in shapes() {
                let n = *visible.iter().max().unwrap();
                let (k, v) =
                    (to_cache(&random(&mut rng, n * stride, 2.0)), to_cache(&random(&mut rng, n * stride, 2.0)));
                let q = random(&mut rng, visible.len() * heads * hd, 1.5);
                let kv = KvHead { k: &k, v: &v, stride, offset: hd, len: hd };
                let queries = Queries { q: &q, heads, visible: &visible };
                let mut want = vec![0f32; q.len()];
                attend_rows_lanes(queries, kv, 0.3, &mut want);
                for (name, f) in builds::<T>() {
                    let mut got = vec![f32::NAN; q.len()];
                    f(queries, kv, 0.3, &mut scores, &mut got);
                    assert!(
                        got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{what} {name}: head {hd}, {heads} heads, visible {visible:?}"
                    );
                }
            }
        }
    }
}

/// Every build, tile shape and block split gives each row the bits of
/// the row alone, position by position: decoding, prompts with and
/// without cached positions, rows per tile that span two tokens, heads
/// of sizes the SIMD tiles take and one they do not (40).
#[test]
fn every_build_gives_each_row_the_per_row_loops_bits() {
    check_builds::<f32>(|x| x.to_vec(), "f32");
}

/// An f16 cache gives attention over the values it holds exactly: the
/// same bits as an f32 cache holding the f16-rounded values, in every
/// build; and every f16 widens as `half` widens it.
#[test]
fn attention_over_an_f16_cache_equals_attention_over_its_values_in_f32() {
    for h in 0..=u16::MAX {
        let want = half::f16::from_bits(h).to_f32();
        let got = crate::kernels::f16_bits_to_f32(h);
        assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{h:#06x}");
    }
    check_builds::<u16>(|x| x.iter().map(|v| half::f16::from_f32(*v).to_bits()).collect(), "f16");
    let mut rng = Rng::new(5);
    let (hd, stride, heads) = (128, 3 * 128, 4);
    for visible in shapes() {
        let n = *visible.iter().max().unwrap();
        let k16: Vec<u16> =
            random(&mut rng, n * stride, 2.0).iter().map(|x| half::f16::from_f32(*x).to_bits()).collect();
        let v16: Vec<u16> =
            random(&mut rng, n * stride, 2.0).iter().map(|x| half::f16::from_f32(*x).to_bits()).collect();
        let widen = |h: &[u16]| -> Vec<f32> { h.iter().map(|h| crate::kernels::f16_bits_to_f32(*h)).collect() };
        let (k32, v32) = (widen(&k16), widen(&v16));
        let q = random(&mut rng, visible.len() * heads * hd, 1.0);
        let queries = Queries { q: &q, heads, visible: &visible };
        let mut want = vec![0f32; q.len()];
        attend_rows_lanes(queries, KvHead { k: &k32[..], v: &v32[..], stride, offset: hd, len: hd }, 0.3, &mut want);
        let mut scores = Vec::new();
        for (name, f) in builds::<u16>() {
            let mut got = vec![1f32; q.len()];
            f(queries, KvHead { k: &k16[..], v: &v16[..], stride, offset: hd, len: hd }, 0.3, &mut scores, &mut got);
            assert_eq!(got, want, "{name}, visible {visible:?}");
        }
    }
}

/// Softmax weights sum to one and follow the scores: a row whose query
/// matches one key far better than the rest gets (nearly) that value.
#[test]
fn a_row_attends_to_the_key_it_matches() {
    let (hd, n) = (64usize, 50usize);
    let mut k = vec![0f32; n * hd];
    let v: Vec<f32> = (0..n * hd).map(|i| (i / hd) as f32).collect();
    k[17 * hd] = 1.0;
    let q: Vec<f32> = (0..hd).map(|i| if i == 0 { 100.0 } else { 0.0 }).collect();
    let mut out = vec![0f32; hd];
    let kv = KvHead { k: &k, v: &v, stride: hd, offset: 0, len: hd };
    attend(Queries { q: &q, heads: 1, visible: &[n] }, kv, 1.0, &mut Vec::new(), &mut out);
    assert!(out.iter().all(|x| (x - 17.0).abs() < 1e-3), "{out:?}");
    // Causal: a token that sees only positions 0..10 never gets value 17.
    attend(Queries { q: &q, heads: 1, visible: &[10] }, kv, 1.0, &mut Vec::new(), &mut out);
    assert!(out.iter().all(|x| (x - 4.5).abs() < 1e-3), "{out:?}");
}

/// A call whose rows or positions do not match the cache is refused,
/// not read past.
#[test]
#[should_panic(expected = "positions past the cache")]
fn positions_past_the_cache_are_refused() {
    let (k, v) = (vec![0f32; 64 * 3], vec![0f32; 64 * 3]);
    let q = vec![0f32; 64];
    let kv = KvHead { k: &k, v: &v, stride: 64, offset: 0, len: 64 };
    attend(Queries { q: &q, heads: 1, visible: &[4] }, kv, 1.0, &mut Vec::new(), &mut vec![0f32; 64]);
}
