//! The mutator: a seeded pseudo-random generator and byte-level mutations (bit flips, byte
//! inserts and deletes, duplicated ranges, splices of two corpus entries, dictionary tokens and
//! boundary numbers). Deterministic for a seed, so a CI failure replays exactly with the same seed.

/// SplitMix64: small, fast, and its whole state is the seed (no dependency needed).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// Bytes that sit on parser boundaries: line ends, separators, controls, the top bit.
const INTERESTING_BYTES: &[u8] = b"\r\n \t:;,=\"\0\x7f\x80\xff[]#.-0";

/// Numbers that sit on parsers' boundaries: zero, negative, overflow of u32 / u64, hex past u64.
const INTERESTING_NUMBERS: &[&[u8]] = &[
    b"0",
    b"-1",
    b"+1",
    b"4294967296",
    b"18446744073709551615",
    b"18446744073709551616",
    b"FFFFFFFFFFFFFFFF",
    b"1FFFFFFFFFFFFFFFF",
    b"00000000000000000000001",
    b"1e9",
    b"0x10",
];

/// Mutates `input` with one to four mutations chosen by `rng`; `corpus` feeds splices and `dict`
/// the target's tokens. The result is at most `max_len` bytes.
pub fn mutate(
    rng: &mut Rng,
    input: &[u8],
    corpus: &[Vec<u8>],
    dict: &[&[u8]],
    max_len: usize,
) -> Vec<u8> {
    let mut out = input.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = out.len();
        match rng.below(10) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                let b = if rng.one_in(2) {
                    INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())]
                } else {
                    rng.next_u64() as u8
                };
                out.insert(i, b);
            }
            3 if len > 0 => {
                let start = rng.below(len);
                let n = 1 + rng.below((len - start).min(16));
                out.drain(start..start + n);
            }
            4 if len > 0 => {
                // A range repeated: longer headers, doubled lines, repeated chunks.
                let start = rng.below(len);
                let n = 1 + rng.below((len - start).min(64));
                let piece = out[start..start + n].to_vec();
                let most = if rng.one_in(8) { 256 } else { 4 };
                let times = 1 + rng.below(most);
                let at = rng.below(len + 1);
                let insert: Vec<u8> = piece.iter().copied().cycle().take(n * times).collect();
                out.splice(at..at, insert);
            }
            5 if !dict.is_empty() => {
                let token = dict[rng.below(dict.len())];
                let at = rng.below(len + 1);
                out.splice(at..at, token.iter().copied());
            }
            6 if !dict.is_empty() && len > 0 => {
                let token = dict[rng.below(dict.len())];
                let start = rng.below(len);
                let n = rng.below((len - start).min(16) + 1);
                out.splice(start..start + n, token.iter().copied());
            }
            7 if !corpus.is_empty() => {
                // A splice: a prefix of this input and a suffix of another.
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            8 => {
                // A run of digits (decimal or hex) replaced by a boundary number.
                let digits: Vec<usize> = (0..len).filter(|&i| out[i].is_ascii_hexdigit()).collect();
                if digits.is_empty() {
                    continue;
                }
                let start = digits[rng.below(digits.len())];
                let end = (start..len)
                    .find(|&i| !out[i].is_ascii_hexdigit())
                    .unwrap_or(len);
                let number = INTERESTING_NUMBERS[rng.below(INTERESTING_NUMBERS.len())];
                out.splice(start..end, number.iter().copied());
            }
            9 if len > 1 => {
                // A truncation: inputs that end mid-line, mid-body, mid-record.
                out.truncate(rng.below(len));
            }
            _ => {}
        }
    }
    out.truncate(max_len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_fixes_the_sequence_and_seeds_differ() {
        let run = |seed| {
            let mut rng = Rng::new(seed);
            let corpus = vec![b"GET / HTTP/1.1\r\n\r\n".to_vec()];
            (0..50)
                .map(|_| mutate(&mut rng, &corpus[0], &corpus, &[b"chunked"], 1024))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn mutations_change_inputs_and_respect_the_length_bound() {
        let mut rng = Rng::new(1);
        let input = b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello".to_vec();
        let corpus = vec![input.clone()];
        let mut changed = 0;
        for _ in 0..1000 {
            let out = mutate(&mut rng, &input, &corpus, &[b"\r\n", b"chunked"], 64);
            assert!(out.len() <= 64);
            changed += usize::from(out != input);
        }
        // Nearly every mutation changes something (a few are no-ops, as a flipped-back bit).
        assert!(changed > 900, "{changed}");
    }
}
