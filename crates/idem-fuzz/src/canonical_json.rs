//! `canonical_json`: the canonical JSON form ([`idem_core::canonical_json`]) and the
//! fingerprint's canonical JSON mode, on any body.

use idem_core::Fingerprint;
use idem_core::canonical_json::{Json, JsonError};

/// Parses `data` as JSON and checks the canonical form: it is a fixed point (its own canonical
/// form), every respelling of the document (members reversed, whitespace added) has the same
/// fingerprint, and a body that has no canonical form is hashed raw by `body` and refused by
/// `try_body` exactly when its meaning is ambiguous (a member twice, too deep).
pub fn canonical_json(data: &[u8]) {
    let canonical = fingerprint(true, data);
    let document = match Json::parse(data) {
        Ok(document) => document,
        Err(error) => {
            assert_eq!(
                canonical,
                fingerprint(false, data),
                "a body with no canonical form hashes as its raw bytes"
            );
            let refused = Fingerprint::builder()
                .canonical_json(true)
                .try_body(data)
                .is_err();
            assert_eq!(
                refused,
                !matches!(error, JsonError::Syntax(_)),
                "only ambiguous JSON is refused: {error}"
            );
            return;
        }
    };
    let text = document.canonical();
    let reparsed = Json::parse(&text).expect("the canonical form parses");
    assert_eq!(
        reparsed, document,
        "the canonical form means the same document"
    );
    assert_eq!(
        reparsed.canonical(),
        text,
        "the canonical form is a fixed point"
    );
    let expected = Fingerprint::builder().part("json-body", &text).finish();
    assert_eq!(canonical, expected, "hashed as its canonical form");
    let mut respelled = Vec::new();
    write(&document, &mut Spelling::seeded(data), &mut respelled);
    assert_eq!(
        fingerprint(true, &respelled),
        canonical,
        "the same JSON spelt {}",
        String::from_utf8_lossy(&respelled)
    );
}

fn fingerprint(canonical: bool, body: &[u8]) -> Fingerprint {
    Fingerprint::builder()
        .canonical_json(canonical)
        .body(body)
        .finish()
}

/// How [`write`] spells a value: keys sorted or reversed, whitespace or none.
struct Spelling {
    reverse_keys: bool,
    /// A xorshift state that picks the whitespace; 0: none.
    whitespace: u64,
}

impl Spelling {
    /// Keys in reverse order and whitespace drawn from a seed that is a function of `data`.
    fn seeded(data: &[u8]) -> Self {
        let seed = data.iter().fold(0x9e37_79b9_7f4a_7c15_u64, |seed, &byte| {
            (seed ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        Self {
            reverse_keys: true,
            whitespace: seed | 1,
        }
    }

    fn space(&mut self, out: &mut Vec<u8>) {
        if self.whitespace == 0 {
            return;
        }
        self.whitespace ^= self.whitespace << 13;
        self.whitespace ^= self.whitespace >> 7;
        self.whitespace ^= self.whitespace << 17;
        let count = self.whitespace % 3;
        for index in 0..count {
            out.push(b" \t\r\n"[((self.whitespace >> (8 * index)) & 3) as usize]);
        }
    }
}

/// Writes `value` as `spelling` says: members in reverse order and whitespace anywhere it
/// is allowed (numbers and strings as the canonical form writes them, which are valid JSON).
fn write(value: &Json, spelling: &mut Spelling, out: &mut Vec<u8>) {
    spelling.space(out);
    match value {
        Json::Object(members) => {
            let mut entries: Vec<_> = members.iter().collect();
            if spelling.reverse_keys {
                entries.reverse();
            }
            out.push(b'{');
            for (index, (name, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                spelling.space(out);
                out.extend(Json::String(name.clone()).canonical());
                spelling.space(out);
                out.push(b':');
                write(item, spelling, out);
            }
            spelling.space(out);
            out.push(b'}');
        }
        Json::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write(item, spelling, out);
            }
            spelling.space(out);
            out.push(b']');
        }
        scalar => out.extend(scalar.canonical()),
    }
    spelling.space(out);
}
