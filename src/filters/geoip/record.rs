//! Reads the few fields the stage writes straight from a verified database's data section.
//! Keys of no interest are skipped without decoding and a skipped pointer is not followed, so a
//! City record costs a handful of key comparisons instead of decoding every language's names
//! (which `maxminddb`'s serde decoder does even for fields the target type ignores).
//! Every read is bounds-checked: a record the verifier let through but that is not shaped as
//! expected yields missing fields, never a panic.

/// The City (or Country) fields the stage can write, borrowed from the database.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CityFields<'a> {
    pub country_iso_code: Option<&'a str>,
    pub country_name: Option<&'a str>,
    pub continent_code: Option<&'a str>,
    /// The most specific subdivision's code, without the country prefix.
    pub region_code: Option<&'a str>,
    pub region_name: Option<&'a str>,
    pub city_name: Option<&'a str>,
    pub postal_code: Option<&'a str>,
    pub time_zone: Option<&'a str>,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
}

/// The ASN fields the stage can write.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AsnFields<'a> {
    pub number: Option<u32>,
    pub organization: Option<&'a str>,
}

/// Where a string lies in the data section; kept instead of the string so a cached record
/// costs a few words and no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    at: u32,
    len: u32,
}

impl Span {
    const NONE: Span = Span {
        at: 0,
        len: u32::MAX,
    };

    fn of(data: &[u8], s: Option<&str>) -> Option<Span> {
        let Some(s) = s else {
            return Some(Span::NONE);
        };
        let at = (s.as_ptr() as usize).checked_sub(data.as_ptr() as usize)?;
        Some(Span {
            at: u32::try_from(at).ok()?,
            len: u32::try_from(s.len()).ok().filter(|&l| l != u32::MAX)?,
        })
    }

    fn get(self, data: &[u8]) -> Option<&str> {
        if self.len == u32::MAX {
            return None;
        }
        let at = self.at as usize;
        std::str::from_utf8(data.get(at..at + self.len as usize)?).ok()
    }
}

/// A decoded City record as positions in its data section: what the stage caches per record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CitySpans {
    strs: [Span; 8],
    latitude: Option<f64>,
    longitude: Option<f64>,
}

impl CitySpans {
    /// `None` when a string lies beyond what the spans can address (a data section over 4 GiB).
    pub fn of(data: &[u8], c: &CityFields) -> Option<CitySpans> {
        let strs = [
            c.country_iso_code,
            c.country_name,
            c.continent_code,
            c.region_code,
            c.region_name,
            c.city_name,
            c.postal_code,
            c.time_zone,
        ];
        let mut out = [Span::NONE; 8];
        for (o, s) in out.iter_mut().zip(strs) {
            *o = Span::of(data, s)?;
        }
        Some(CitySpans {
            strs: out,
            latitude: c.latitude,
            longitude: c.longitude,
        })
    }

    /// The fields again, from the same data section they were taken from.
    pub fn fields<'a>(&self, data: &'a [u8]) -> CityFields<'a> {
        let s = |i: usize| self.strs[i].get(data);
        CityFields {
            country_iso_code: s(0),
            country_name: s(1),
            continent_code: s(2),
            region_code: s(3),
            region_name: s(4),
            city_name: s(5),
            postal_code: s(6),
            time_zone: s(7),
            latitude: self.latitude,
            longitude: self.longitude,
        }
    }
}

/// A decoded ASN record as positions in its data section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsnSpans {
    number: Option<u32>,
    organization: Span,
}

impl AsnSpans {
    pub fn of(data: &[u8], a: &AsnFields) -> Option<AsnSpans> {
        Some(AsnSpans {
            number: a.number,
            organization: Span::of(data, a.organization)?,
        })
    }

    pub fn fields<'a>(&self, data: &'a [u8]) -> AsnFields<'a> {
        AsnFields {
            number: self.number,
            organization: self.organization.get(data),
        }
    }
}

/// Bounds the recursion of [`Data::skip`]; deeper than any MaxMind database nests (the
/// verifier refuses deeper nesting too).
const MAX_DEPTH: u32 = 32;

const POINTER: u8 = 1;
const STRING: u8 = 2;
const DOUBLE: u8 = 3;
const MAP: u8 = 7;
const ARRAY: u8 = 11;
const FLOAT: u8 = 15;

/// Decodes the City record at `offset` of `data` (a data section).
pub fn city(data: &[u8], offset: usize) -> CityFields<'_> {
    let d = Data(data);
    let mut out = CityFields::default();
    let Some(entries) = d.map(offset) else {
        return out;
    };
    for (key, at) in entries {
        match key {
            b"city" => out.city_name = d.english_name(at),
            b"continent" => out.continent_code = d.field_str(at, b"code"),
            b"country" => {
                if let Some(fields) = d.map(at) {
                    for (k, v) in fields {
                        match k {
                            b"iso_code" => out.country_iso_code = d.str(v),
                            b"names" => out.country_name = d.name_en(v),
                            _ => {}
                        }
                    }
                }
            }
            b"location" => {
                if let Some(fields) = d.map(at) {
                    for (k, v) in fields {
                        match k {
                            b"latitude" => out.latitude = d.float(v),
                            b"longitude" => out.longitude = d.float(v),
                            b"time_zone" => out.time_zone = d.str(v),
                            _ => {}
                        }
                    }
                }
            }
            b"postal" => out.postal_code = d.field_str(at, b"code"),
            b"subdivisions" => {
                // Like Logstash and the Elasticsearch geoip processor: the most specific one.
                if let Some(last) = d.array(at).and_then(Iterator::last) {
                    if let Some(fields) = d.map(last) {
                        for (k, v) in fields {
                            match k {
                                b"iso_code" => out.region_code = d.str(v),
                                b"names" => out.region_name = d.name_en(v),
                                _ => {}
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Decodes the ASN record at `offset` of `data`.
pub fn asn(data: &[u8], offset: usize) -> AsnFields<'_> {
    let d = Data(data);
    let mut out = AsnFields::default();
    let Some(entries) = d.map(offset) else {
        return out;
    };
    for (key, at) in entries {
        match key {
            b"autonomous_system_number" => {
                out.number = d.uint(at).and_then(|n| u32::try_from(n).ok())
            }
            b"autonomous_system_organization" => out.organization = d.str(at),
            _ => {}
        }
    }
    out
}

#[derive(Clone, Copy)]
struct Data<'a>(&'a [u8]);

impl<'a> Data<'a> {
    /// Control byte(s) at `at`: (type, size, offset of the payload), read exactly as
    /// `verify` reads them.
    #[inline]
    fn header(self, at: usize) -> Option<(u8, usize, usize)> {
        let ctrl = *self.0.get(at)?;
        let mut pos = at + 1;
        let mut kind = ctrl >> 5;
        if kind == 0 {
            kind = self.0.get(pos)?.checked_add(7)?;
            pos += 1;
        }
        let raw = (ctrl & 0x1f) as usize;
        if raw < 29 {
            return Some((kind, raw, pos));
        }
        let extra = raw - 28;
        let bytes = self.0.get(pos..pos + extra)?;
        let be = bytes.iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        let size = match raw {
            29 => 29 + be,
            30 => 285 + be,
            _ => 65_821 + be,
        };
        Some((kind, size, pos + extra))
    }

    /// A pointer's target and the offset after the pointer.
    #[inline]
    fn pointer(self, size: usize, pos: usize) -> Option<(usize, usize)> {
        let len = ((size >> 3) & 0x3) + 1;
        let raw = self.0.get(pos..pos + len)?;
        let base = if len == 4 { 0 } else { size & 0x7 };
        let target = raw.iter().fold(base, |acc, &b| (acc << 8) | b as usize)
            + [0, 0, 2048, 526_336, 0][len];
        Some((target, pos + len))
    }

    /// The header of the value at `at`, after following one pointer.
    #[inline]
    fn resolved(self, at: usize) -> Option<(u8, usize, usize)> {
        let h = self.header(at)?;
        if h.0 != POINTER {
            return Some(h);
        }
        let (target, _) = self.pointer(h.1, h.2)?;
        let t = self.header(target)?;
        (t.0 != POINTER).then_some(t)
    }

    /// The offset just after the value at `at`; a pointer is stepped over, not followed.
    fn skip(self, at: usize, depth: u32) -> Option<usize> {
        if depth > MAX_DEPTH {
            return None;
        }
        let (kind, size, pos) = self.header(at)?;
        match kind {
            POINTER => self.pointer(size, pos).map(|(_, end)| end),
            MAP | ARRAY => {
                let items = if kind == MAP { size * 2 } else { size };
                let mut next = pos;
                for _ in 0..items {
                    next = self.skip(next, depth + 1)?;
                }
                Some(next)
            }
            // Booleans keep their value in the size bits.
            14 => Some(pos),
            _ => Some(pos + size),
        }
    }

    fn bytes(self, at: usize, want: u8) -> Option<&'a [u8]> {
        let (kind, size, pos) = self.resolved(at)?;
        (kind == want).then(|| self.0.get(pos..pos + size))?
    }

    fn str(self, at: usize) -> Option<&'a str> {
        std::str::from_utf8(self.bytes(at, STRING)?).ok()
    }

    fn float(self, at: usize) -> Option<f64> {
        let (kind, size, pos) = self.resolved(at)?;
        let b = self.0.get(pos..pos + size)?;
        match (kind, size) {
            (DOUBLE, 8) => Some(f64::from_be_bytes(b.try_into().ok()?)),
            (FLOAT, 4) => Some(f64::from(f32::from_be_bytes(b.try_into().ok()?))),
            _ => None,
        }
    }

    fn uint(self, at: usize) -> Option<u64> {
        let (kind, size, pos) = self.resolved(at)?;
        if !matches!(kind, 5 | 6 | 9 | 10) || size > 8 {
            return None;
        }
        let b = self.0.get(pos..pos + size)?;
        Some(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }

    fn map(self, at: usize) -> Option<Entries<'a>> {
        let (kind, size, pos) = self.resolved(at)?;
        (kind == MAP).then_some(Entries {
            data: self,
            pos,
            left: size,
        })
    }

    fn array(self, at: usize) -> Option<Items<'a>> {
        let (kind, size, pos) = self.resolved(at)?;
        (kind == ARRAY).then_some(Items {
            data: self,
            pos,
            left: size,
        })
    }

    /// `names.en` of the map at `at`.
    fn english_name(self, at: usize) -> Option<&'a str> {
        self.map(at)?
            .find(|(k, _)| *k == b"names")
            .and_then(|(_, v)| self.name_en(v))
    }

    /// The `en` entry of the names map at `at`.
    fn name_en(self, at: usize) -> Option<&'a str> {
        self.field_str(at, b"en")
    }

    /// The string under `key` in the map at `at`.
    fn field_str(self, at: usize, key: &[u8]) -> Option<&'a str> {
        self.map(at)?
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| self.str(v))
    }
}

/// A map's entries: the key's bytes and the offset of its value.
struct Entries<'a> {
    data: Data<'a>,
    pos: usize,
    left: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = (&'a [u8], usize);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let d = self.data;
        // The key is read once: a string, or a pointer to one (keys are usually shared).
        let key = d.header(self.pos).and_then(|(kind, size, pos)| match kind {
            STRING => Some((d.0.get(pos..pos + size)?, pos + size)),
            POINTER => {
                let (target, end) = d.pointer(size, pos)?;
                let (kind, size, pos) = d.header(target)?;
                (kind == STRING).then(|| Some((d.0.get(pos..pos + size)?, end)))?
            }
            _ => None,
        });
        let item = key.and_then(|(k, value)| Some((k, value, d.skip(value, 0)?)));
        match item {
            Some((k, v, next)) => {
                self.pos = next;
                Some((k, v))
            }
            None => {
                // Malformed: stop rather than misread the rest.
                self.left = 0;
                None
            }
        }
    }
}

/// An array's items as offsets.
struct Items<'a> {
    data: Data<'a>,
    pos: usize,
    left: usize,
}

impl Iterator for Items<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let at = self.pos;
        match self.data.skip(at, 0) {
            Some(n) => {
                self.pos = n;
                Some(at)
            }
            None => {
                self.left = 0;
                None
            }
        }
    }
}
