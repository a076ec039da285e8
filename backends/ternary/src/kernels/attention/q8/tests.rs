use super::super::tests::{random, shapes};
use super::super::{attend_rows_lanes, softmax};
use super::*;
use crate::kernels::float::axpy_lanes;
use crate::sampler::Rng;

type Build<V> = (&'static str, fn(Queries, Q8Keys, KvHead<V>, f32, &mut Vec<f32>, &mut [f32]));

fn builds<V: KvElem>() -> Vec<Build<V>> {
    let b: Vec<Build<V>> = vec![("blocked scalar", attend_q8_scalar::<V>), ("dispatched", attend_q8::<V>)];
    #[cfg(target_arch = "x86_64")]
    let b = {
        let mut b = b;
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            // SAFETY: AVX2, FMA and F16C checked.
            b.push(("avx2", |q, k, v, s, sc, o| unsafe { super::super::x86::attend_q8_avx2(q, k, v, s, sc, o) }));
        }
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
        {
            // SAFETY: AVX-512 F, BW and VNNI checked.
            b.push(("avx512 vnni", |q, k, v, s, sc, o| unsafe {
                super::super::x86::attend_q8_avx512(q, k, v, s, sc, o)
            }));
        }
        b
    };
    b
}

/// The module's definition, row by row and position by position: the
/// score from each code and scale where the cache's layout puts them
/// (`code_at`, `scale_at`: no tiles), softmax, values added in order.
fn per_row<V: KvElem>(q: Queries, keys: Q8Keys, values: KvHead<V>, scale: f32) -> Vec<f32> {
    let hd = values.len;
    let rows = Q8Rows::new(q.q, hd);
    let mut out = vec![0f32; q.q.len()];
    let mut buf = [0f32; super::super::MAX_HEAD_DIM];
    for (r, o) in out.chunks_exact_mut(hd).enumerate() {
        let n = q.visible_of(r);
        let c = keys.cache;
        let mut s: Vec<f32> = (0..n)
            .map(|p| {
                let mut s = 0f32;
                for b in 0..keys.blocks {
                    let isum: i32 = (0..QK)
                        .map(|i| {
                            let k = (c.codes[c.code_at(p, keys.first + b, i)] ^ 0x80) as i8;
                            i32::from(rows.codes(r, b)[i]) * i32::from(k)
                        })
                        .sum();
                    s += (rows.d[r * keys.blocks + b] * c.scales[c.scale_at(p, keys.first + b)]) * isum as f32;
                }
                s * scale
            })
            .collect();
        softmax(&mut s);
        for (p, w) in s.iter().enumerate() {
            axpy_lanes(o, *w, V::widen(values.value(p), &mut buf));
        }
    }
    out
}

/// Every build gives every row the definition's bits: decoding, prompts
/// with and without cached positions, tiles of rows spanning two tokens,
/// position ranges ending inside a tile; heads of 32, 64 and 128 at each
/// place in the position's vector; f16 and f32 values.
#[test]
fn every_build_gives_each_row_the_definitions_bits() {
    let mut rng = Rng::new(31);
    for hd in [32usize, 64, 128] {
        let kv_heads = 3;
        let stride = kv_heads * hd;
        for heads in [1usize, 3, 4, 5] {
            for visible in shapes() {
                let n = *visible.iter().max().unwrap();
                let mut keys = Q8KeyCache::new(stride, n);
                keys.extend(&random(&mut rng, n * stride, 2.0));
                let v32 = random(&mut rng, n * stride, 2.0);
                let v16: Vec<u16> = v32.iter().map(|x| half::f16::from_f32(*x).to_bits()).collect();
                let q = random(&mut rng, visible.len() * heads * hd, 1.5);
                let queries = Queries { q: &q, heads, visible: &visible };
                let h = n % kv_heads;
                let (k, v32, v16) = (
                    keys.head(h, hd),
                    KvHead { k: &[][..], v: &v32[..], stride, offset: h * hd, len: hd },
                    KvHead { k: &[][..], v: &v16[..], stride, offset: h * hd, len: hd },
                );
                let want32 = per_row(queries, k, v32, 0.3);
                let want16 = per_row(queries, k, v16, 0.3);
                let mut scores = vec![f32::NAN; 3];
                for (name, f) in builds::<f32>() {
                    let mut got = vec![f32::NAN; q.len()];
                    f(queries, k, v32, 0.3, &mut scores, &mut got);
                    assert!(
                        got.iter().zip(&want32).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "f32 values, {name}: head {hd}, {heads} heads, visible {visible:?}"
                    );
                }
                for (name, f) in builds::<u16>() {
                    let mut got = vec![f32::NAN; q.len()];
                    f(queries, k, v16, 0.3, &mut scores, &mut got);
                    assert!(
                        got.iter().zip(&want16).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "f16 values, {name}: head {hd}, {heads} heads, visible {visible:?}"
                    );
                }
            }
        }
    }
}

/// The keys hold what `quantize_q8_0` makes of each position's vector,
/// wherever the position falls in its tile; truncating and appending
/// again, or copying a prefix, gives the cache that appending only those
/// rows gives (the tail lanes of the last tile included).
#[test]
fn keys_hold_the_quantized_rows_through_truncate_and_prefix() {
    let mut rng = Rng::new(8);
    let kv_dim = 96;
    let rows = random(&mut rng, 40 * kv_dim, 3.0);
    let mut all = Q8KeyCache::new(kv_dim, 40);
    all.extend(&rows[..7 * kv_dim]);
    all.extend(&rows[7 * kv_dim..]);
    assert_eq!(all.len(), 40);
    assert_eq!(all.bytes(), 40 * 3 * (32 + 4));
    for p in 0..40 {
        let q = quantize_q8_0(&rows[p * kv_dim..(p + 1) * kv_dim]);
        let want: Vec<f32> = q.q.iter().enumerate().map(|(i, &c)| f32::from(c) * q.d[i / 32]).collect();
        assert_eq!(all.key(p), want, "position {p}");
    }
    for n in [0usize, 1, 15, 16, 17, 33, 40] {
        let mut only = Q8KeyCache::new(kv_dim, 40);
        only.extend(&rows[..n * kv_dim]);
        assert_eq!(all.prefix(n, 40), only, "prefix {n}");
        let mut cut = all.clone();
        cut.truncate(n);
        assert_eq!(cut, only, "truncate to {n}");
        cut.extend(&rows[n * kv_dim..]);
        assert_eq!(cut, all, "truncate to {n}, then the rest again");
    }
}

/// Scores over q8_0 keys stay close to f32's: the same attention over
/// random keys differs from the f32 reference by a small fraction of the
/// values' spread.
#[test]
fn attention_over_q8_0_keys_stays_close_to_f32() {
    let mut rng = Rng::new(12);
    let (hd, heads, n) = (128usize, 4usize, 300usize);
    let k = random(&mut rng, n * hd, 1.0);
    let v = random(&mut rng, n * hd, 1.0);
    let q = random(&mut rng, heads * hd, 1.0);
    let visible = [n];
    let queries = Queries { q: &q, heads, visible: &visible };
    let mut want = vec![0f32; q.len()];
    attend_rows_lanes(queries, KvHead { k: &k[..], v: &v[..], stride: hd, offset: 0, len: hd }, 0.25, &mut want);
    let mut keys = Q8KeyCache::new(hd, n);
    keys.extend(&k);
    let mut got = vec![0f32; q.len()];
    let values = KvHead { k: &[][..], v: &v[..], stride: hd, offset: 0, len: hd };
    attend_q8(queries, keys.head(0, hd), values, 0.25, &mut Vec::new(), &mut got);
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 2e-3, "largest difference {worst}");
    assert!(worst > 0.0, "q8_0 keys changed nothing: are they quantized?");
}
