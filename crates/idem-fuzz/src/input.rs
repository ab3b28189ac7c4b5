//! Structured values drawn from a fuzzer's bytes, so that a target reaches deep into a parser
//! (a route table, a Redis reply) instead of failing at its first check. Every input decodes
//! to something: once the bytes run out, every draw is zero or empty.

/// The bytes left to draw from.
pub(crate) struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub(crate) fn byte(&mut self) -> u8 {
        let Some((&first, rest)) = self.bytes.split_first() else {
            return 0;
        };
        self.bytes = rest;
        first
    }

    pub(crate) fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// A number below `bound` (which must not be 0).
    pub(crate) fn below(&mut self, bound: usize) -> usize {
        usize::from(self.byte()) % bound
    }

    pub(crate) fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[self.below(choices.len())]
    }

    /// Eight bytes, big-endian, zero-padded at the end of the input.
    pub(crate) fn u64(&mut self) -> u64 {
        let mut bytes = [0; 8];
        for byte in &mut bytes {
            *byte = self.byte();
        }
        u64::from_be_bytes(bytes)
    }

    pub(crate) fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.u64().to_be_bytes())
    }

    /// A length byte, then up to that many bytes.
    pub(crate) fn bytes(&mut self) -> &'a [u8] {
        let length = usize::from(self.byte()).min(self.bytes.len());
        let (taken, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        taken
    }

    /// [`bytes`](Self::bytes) as text, invalid UTF-8 replaced.
    pub(crate) fn text(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }

    /// Either one of `words` or, one time in four, bytes of the input's own: known words reach
    /// the branches that compare with them, the input's bytes reach everything else.
    pub(crate) fn word(&mut self, words: &[&[u8]]) -> Vec<u8> {
        if self.below(4) == 0 {
            self.bytes().to_vec()
        } else {
            self.pick(words).to_vec()
        }
    }
}
