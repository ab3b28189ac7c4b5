//! `canonical_json`: the fingerprint's canonical JSON mode, on any body.

use idem_core::Fingerprint;
use serde_json::Value;

/// Fingerprints `data` as a body in canonical JSON mode. A body that is not JSON hashes as its
/// raw bytes; one that is hashes as the same value with its keys sorted and no whitespace, so
/// every spelling of it (keys reversed, whitespace added, serde_json's own compact and pretty
/// forms) has the same fingerprint.
pub fn canonical_json(data: &[u8]) {
    let canonical = fingerprint(true, data);
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        assert_eq!(
            canonical,
            fingerprint(false, data),
            "a body that is not JSON hashes as its raw bytes"
        );
        return;
    };
    let mut sorted = Vec::new();
    write(&value, &mut Spelling::canonical(), &mut sorted);
    let expected = Fingerprint::builder().part("json-body", &sorted).finish();
    assert_eq!(
        canonical,
        expected,
        "hashed as sorted, compact JSON: {}",
        String::from_utf8_lossy(&sorted)
    );
    let mut respelled = Vec::new();
    write(&value, &mut Spelling::seeded(data), &mut respelled);
    let spellings = [
        respelled,
        serde_json::to_vec(&value).expect("a parsed value serialises"),
        serde_json::to_vec_pretty(&value).expect("a parsed value serialises"),
    ];
    for spelling in spellings {
        assert_eq!(
            fingerprint(true, &spelling),
            canonical,
            "the same JSON spelt {}",
            String::from_utf8_lossy(&spelling)
        );
    }
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
    fn canonical() -> Self {
        Self {
            reverse_keys: false,
            whitespace: 0,
        }
    }

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

/// Writes `value` by hand, independently of the code under test, as `spelling` says.
fn write(value: &Value, spelling: &mut Spelling, out: &mut Vec<u8>) {
    spelling.space(out);
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            if spelling.reverse_keys {
                entries.reverse();
            }
            out.push(b'{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                spelling.space(out);
                out.extend(serde_json::to_vec(key).expect("a string serialises"));
                spelling.space(out);
                out.push(b':');
                write(item, spelling, out);
            }
            spelling.space(out);
            out.push(b'}');
        }
        Value::Array(items) => {
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
        scalar => out.extend(serde_json::to_vec(scalar).expect("a scalar serialises")),
    }
    spelling.space(out);
}
