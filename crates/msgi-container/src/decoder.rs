//! The one decoder of the container layout (docs/PROTOCOL.md, section 6).
//!
//! [`decode`] walks a payload once and checks everything there is to check, in one place:
//! the version, every length and count against the bytes left, the number of values
//! against [`Limits::max_values`] and nesting against [`Limits::max_depth`] (each before
//! anything is reserved or recursed into), UTF-8, repeated names and trailing bytes,
//! failing with the typed [`DecodeError`]. What it makes of the texts, bytes and values
//! it finds is up to a [`Build`]: [`Views`] makes a [`ContainerRef`](crate::ContainerRef)'s
//! `&str` / `&[u8]` views of the payload, [`Shared`] an owned
//! [`Container`](crate::Container)'s [`ByteString`] / [`Bytes`] slices of it. Both get
//! the same checks and the same errors because there is only this one decoder.
//!
//! UTF-8 is checked in runs (see [`Runs`]) rather than text by text.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::Hash;
use std::str::Utf8Error;

use bytes::Bytes;
use bytestring::ByteString;

use crate::error::{DecodeError, Field};
use crate::value::{Value, Values, LINEAR_NAME_CHECK};
use crate::view::{ValueRef, ValuesRef};
use crate::wire::{tag, unzigzag, Limits, FORMAT_VERSION};

/// What the decoder makes of the texts, byte strings and values it reads. Every method
/// is given only what the decoder has checked: a text's or byte string's range lies in
/// the payload, a name is not yet among the map's.
pub(crate) trait Build<'a> {
    /// A header field, name or string value.
    type Text: Borrow<str> + Eq + Hash + Clone;
    /// One value.
    type Value;
    /// Named values.
    type Map;

    /// `payload[at..at + len]` as text, or why it is not UTF-8.
    fn text(&mut self, at: usize, len: usize) -> Result<Self::Text, Utf8Error>;
    /// `payload[at..at + len]` as text if it lies in the run of text already checked
    /// (see [`Runs`]), with no other work; `None` otherwise (then ask [`text`](Self::text)).
    fn quick(&self, at: usize, len: usize) -> Option<Self::Text>;
    /// Starts a new run of text at `at` if `at` is at or past the end of the current one
    /// (as [`text`](Self::text) does for a text past it); whether it did.
    fn start_run(&mut self, at: usize) -> bool;
    /// `payload[at..at + len]` as a byte string value.
    fn bytes(&mut self, at: usize, len: usize) -> Self::Value;
    fn null() -> Self::Value;
    fn bool(b: bool) -> Self::Value;
    fn i64(n: i64) -> Self::Value;
    fn u64(n: u64) -> Self::Value;
    fn f64(x: f64) -> Self::Value;
    fn str(text: Self::Text) -> Self::Value;
    fn array(items: Vec<Self::Value>) -> Self::Value;
    fn map(map: Self::Map) -> Self::Value;
    fn map_with_capacity(n: usize) -> Self::Map;
    /// Whether `map` has a value named `name` (for the first [`LINEAR_NAME_CHECK`] names).
    fn contains(map: &Self::Map, name: &str) -> bool;
    /// Adds the names of `map` to `set` (the hash set of a map with many names).
    fn add_names(map: &Self::Map, set: &mut HashSet<Self::Text>);
    /// Appends a value whose name is not in `map`.
    fn push(map: &mut Self::Map, name: Self::Text, value: Self::Value);
}

/// A container's header as decoded.
pub(crate) struct Header<T> {
    pub(crate) source_id: T,
    pub(crate) source_sub_id: T,
    pub(crate) target_id: T,
    pub(crate) target_sub_id: T,
    pub(crate) message_type: T,
}

/// Decodes `payload` with `build`: the header and the container's values, or the first
/// fault. Never panics, whatever the bytes. Inlined into its two callers, which build
/// their container from the parts in place.
#[inline(always)]
pub(crate) fn decode<'a, B: Build<'a>>(
    payload: &'a [u8],
    build: B,
    limits: &Limits,
) -> Result<(Header<B::Text>, B::Map), DecodeError> {
    let mut c = Cursor {
        buf: payload,
        pos: 0,
        values_left: limits.max_values(),
        max_values: limits.max_values(),
        max_depth: limits.max_depth(),
        build,
        error: None,
    };
    match c.container() {
        Ok(decoded) => Ok(decoded),
        // `Stop` is only made by `Cursor::fail`, which keeps the error.
        Err(Stop) => Err(c
            .error
            .take()
            .unwrap_or(DecodeError::Truncated { at: c.pos })),
    }
}

/// The names of a map read so far, to find a repeat in time linear in the number of
/// names.
struct Names<T> {
    /// A bit per name length (mod 64): a name whose length no earlier name has is not
    /// a repeat, without comparing it with any (most names of a map differ in length).
    lengths: u64,
    /// Every name, once a map has more than [`LINEAR_NAME_CHECK`] and a name whose
    /// length came before (compared name by name until then).
    seen: Option<HashSet<T>>,
}

impl<T> Default for Names<T> {
    fn default() -> Self {
        Names {
            lengths: 0,
            seen: None,
        }
    }
}

impl<T: Borrow<str> + Eq + Hash + Clone> Names<T> {
    /// Whether `name`, value `i` of `count` in `map`, repeats a name of `map`; adds it.
    #[inline(always)]
    fn repeated<'a, B: Build<'a, Text = T>>(
        &mut self,
        map: &B::Map,
        name: &T,
        i: usize,
        count: usize,
    ) -> bool {
        let text: &str = name.borrow();
        let bit = 1u64 << (text.len() % 64);
        let maybe = self.lengths & bit != 0;
        self.lengths |= bit;
        if i < LINEAR_NAME_CHECK {
            // No set before this many names.
            return maybe && B::contains(map, text);
        }
        match &mut self.seen {
            // Once the set is made, every name goes in it.
            Some(seen) => !seen.insert(name.clone()),
            None if !maybe => false,
            None => {
                let (set, repeated) = first_set::<B>(map, name, count);
                self.seen = Some(set);
                repeated
            }
        }
    }
}

/// The set of the names of `map` and `name`, and whether `name` was among them.
#[inline(never)]
fn first_set<'a, B: Build<'a>>(
    map: &B::Map,
    name: &B::Text,
    count: usize,
) -> (HashSet<B::Text>, bool) {
    let mut set = HashSet::with_capacity(count);
    B::add_names(map, &mut set);
    let repeated = !set.insert(name.clone());
    (set, repeated)
}

/// Whether [`Cursor::quick_values`] is tried: always, but in the test that holds it to
/// the general path.
#[cfg(not(test))]
#[inline(always)]
fn quick_on() -> bool {
    true
}

/// A varint of 1 to 8 bytes read as one little-endian word from the first 8 bytes of
/// `rest`: the number and its length, `Err` for an overlong one (a last byte of zero
/// after the first), `None` when `rest` is shorter than 8 bytes or the varint longer
/// (read byte by byte then).
#[inline(always)]
fn word_varint(rest: &[u8]) -> Option<Result<(u64, usize), ()>> {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let w = u64::from_le_bytes(*rest.first_chunk::<8>()?);
    // The first byte without its high bit ends the varint.
    let ends = !w & HIGH;
    if ends == 0 {
        return None;
    }
    let len = (ends.trailing_zeros() / 8 + 1) as usize;
    // The varint's bytes, the rest cleared, then its 7-bit groups packed.
    let x = (w & (u64::MAX >> (64 - 8 * len))) & 0x7f7f_7f7f_7f7f_7f7f;
    let x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
    let x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
    let n = (x & 0x0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4);
    // Shortest form only: a last byte of zero makes it overlong.
    if len > 1 && w >> (8 * (len - 1)) & 0xff == 0 {
        return Some(Err(()));
    }
    Some(Ok((n, len)))
}

#[cfg(test)]
thread_local! {
    static QUICK: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

#[cfg(test)]
fn quick_on() -> bool {
    QUICK.with(std::cell::Cell::get)
}

/// A cursor method failed; the error is in [`Cursor::error`]. Keeps every result small
/// (a `DecodeError` is 40 bytes), so the hot path returns values in registers.
struct Stop;

type Step<T> = Result<T, Stop>;

struct Cursor<'a, B> {
    buf: &'a [u8],
    pos: usize,
    values_left: usize,
    max_values: usize,
    max_depth: usize,
    build: B,
    /// The first error, when a method returned [`Stop`].
    error: Option<DecodeError>,
}

impl<'a, B: Build<'a>> Cursor<'a, B> {
    #[inline(always)]
    fn container(&mut self) -> Step<(Header<B::Text>, B::Map)> {
        let version = self.u8()?;
        if version != FORMAT_VERSION {
            return Err(self.fail(DecodeError::UnsupportedVersion { version }));
        }
        // The header's texts and most names and strings after them are in the run from
        // here (its first length byte on).
        if quick_on() {
            self.build.start_run(self.pos + 1);
        }
        let header = Header {
            source_id: self.short(Field::SourceId)?,
            source_sub_id: self.short(Field::SourceSubId)?,
            target_id: self.short(Field::TargetId)?,
            target_sub_id: self.short(Field::TargetSubId)?,
            message_type: self.short(Field::MessageType)?,
        };
        let values = self.values(0)?;
        let count = self.left();
        if count != 0 {
            return Err(self.fail(DecodeError::TrailingBytes {
                at: self.pos,
                count,
            }));
        }
        Ok((header, values))
    }

    #[cold]
    #[inline(never)]
    fn fail(&mut self, e: DecodeError) -> Stop {
        self.error = Some(e);
        Stop
    }

    #[inline]
    fn left(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    #[inline]
    fn u8(&mut self) -> Step<u8> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(self.fail(DecodeError::Truncated { at: self.pos })),
        }
    }

    #[inline]
    fn varint(&mut self) -> Step<u64> {
        // One byte: the common case (lengths, counts, small numbers).
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
        }
        self.long_varint()
    }

    /// A varint of two bytes or more (the first has its high bit set).
    #[inline(never)]
    fn long_varint(&mut self) -> Step<u64> {
        let at = self.pos;
        let rest = self.buf.get(at..).unwrap_or_default();
        match word_varint(rest) {
            Some(Ok((n, len))) => {
                self.pos = at + len;
                return Ok(n);
            }
            Some(Err(())) => return Err(self.fail(DecodeError::BadVarint { at })),
            None => {}
        }
        let mut n = 0u64;
        for (i, &byte) in rest.iter().take(10).enumerate() {
            n |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                // Shortest form only: no final zero byte but a lone one, and the tenth
                // byte holds the 64th bit only.
                if (byte == 0 && i > 0) || (i == 9 && byte > 1) {
                    return Err(self.fail(DecodeError::BadVarint { at }));
                }
                self.pos = at + i + 1;
                return Ok(n);
            }
        }
        if rest.len() < 10 {
            return Err(self.fail(DecodeError::Truncated {
                at: at + rest.len(),
            }));
        }
        Err(self.fail(DecodeError::BadVarint { at }))
    }

    /// A length prefix, checked against the bytes left.
    #[inline]
    fn length(&mut self) -> Step<usize> {
        let at = self.pos;
        let len = self.varint()?;
        let left = self.left();
        match usize::try_from(len) {
            Ok(n) if n <= left => Ok(n),
            _ => Err(self.fail(DecodeError::LengthTooLarge { len, at, left })),
        }
    }

    /// A count of values each taking at least `min_size` bytes, checked against the
    /// bytes left and charged to the values left, before anything is allocated for it.
    #[inline]
    fn count(&mut self, min_size: usize) -> Step<usize> {
        let at = self.pos;
        let count = self.varint()?;
        let left = self.left();
        let n = match usize::try_from(count) {
            Ok(n) if n <= left / min_size => n,
            _ => return Err(self.fail(DecodeError::CountTooLarge { count, at, left })),
        };
        match self.values_left.checked_sub(n) {
            Some(rest) => self.values_left = rest,
            None => {
                return Err(self.fail(DecodeError::TooManyValues {
                    max: self.max_values,
                    at,
                }))
            }
        }
        Ok(n)
    }

    /// `len` bytes of text from here.
    #[inline(always)]
    fn text(&mut self, len: usize, field: Field) -> Step<B::Text> {
        let at = self.pos;
        if len > self.left() {
            return Err(self.fail(DecodeError::Truncated { at }));
        }
        self.pos = at + len;
        match self.build.text(at, len) {
            Ok(s) => Ok(s),
            Err(source) => Err(self.fail(DecodeError::InvalidUtf8 { field, at, source })),
        }
    }

    /// A header field: one length byte, then UTF-8.
    #[inline(always)]
    fn short(&mut self, field: Field) -> Step<B::Text> {
        match self.quick_short(self.pos, quick_on()) {
            Some((text, end)) => {
                self.pos = end;
                Ok(text)
            }
            None => self.short_text(field),
        }
    }

    /// A header field or name: one length byte, then UTF-8.
    #[inline(always)]
    fn short_text(&mut self, field: Field) -> Step<B::Text> {
        let len = self.u8()?;
        self.text(usize::from(len), field)
    }

    /// The named values of a map. The common shapes are read here, in a tight loop: a
    /// name in the run of text already checked (see [`Runs`]; a name past it starts the
    /// next one), and null, a bool, an integer of a varint up to 8 bytes or a string
    /// shorter than 128 bytes in that run. Anything else
    /// is read by the general path ([`name`](Self::name), [`any_value`](Self::any_value)),
    /// from the same place, with every check and error; what the quick reading accepts,
    /// the general path would accept with the same result, so the answer (and the first
    /// fault) is the same either way (`tests::quick_and_general_paths_agree`).
    #[inline(never)]
    fn values(&mut self, depth: usize) -> Step<B::Map> {
        // A named value takes at least two bytes: an empty name and a one-byte value.
        let count = self.count(2)?;
        let mut map = B::map_with_capacity(count);
        let mut names = Names::default();
        let quick = quick_on();
        let buf = self.buf;
        let mut pos = self.pos;
        for i in 0..count {
            let at = pos;
            // A name past the run starts the next run (as the general path would).
            let mut quick_name = self.quick_short(pos, quick);
            if quick_name.is_none() && quick && self.build.start_run(pos + 1) {
                quick_name = self.quick_short(pos, quick);
            }
            let name = match quick_name {
                Some((name, end)) => {
                    pos = end;
                    name
                }
                None => {
                    self.pos = pos;
                    let name = self.name()?;
                    pos = self.pos;
                    name
                }
            };
            if names.repeated::<B>(&map, &name, i, count) {
                return Err(self.duplicate(&name, at));
            }
            if quick {
                // Strings first: the most common value.
                if let (Some(&tag::STR), Some(&small)) = (buf.get(pos), buf.get(pos + 1)) {
                    let len = usize::from(small);
                    if small < 0x80 {
                        if let Some(text) = self.build.quick(pos + 2, len) {
                            B::push(&mut map, name, B::str(text));
                            pos += 2 + len;
                            continue;
                        }
                    }
                }
                match buf.get(pos).copied() {
                    Some(tag::NULL) => {
                        B::push(&mut map, name, B::null());
                        pos += 1;
                        continue;
                    }
                    Some(tag::FALSE) => {
                        B::push(&mut map, name, B::bool(false));
                        pos += 1;
                        continue;
                    }
                    Some(tag::TRUE) => {
                        B::push(&mut map, name, B::bool(true));
                        pos += 1;
                        continue;
                    }
                    Some(t @ (tag::I64 | tag::U64 | tag::STR)) => match buf.get(pos + 1) {
                        // A longer varint: up to 8 bytes here, longer ones (and an
                        // overlong one, to be reported) by the general path.
                        Some(&first) if first >= 0x80 && t != tag::STR => {
                            let rest = buf.get(pos + 1..).unwrap_or_default();
                            let n = match word_varint(rest) {
                                Some(Ok((n, len))) => {
                                    pos += 1 + len;
                                    n
                                }
                                _ => {
                                    self.pos = pos + 1;
                                    let n = self.long_varint()?;
                                    pos = self.pos;
                                    n
                                }
                            };
                            let value = match t {
                                tag::I64 => B::i64(unzigzag(n)),
                                _ => B::u64(n),
                            };
                            B::push(&mut map, name, value);
                            continue;
                        }
                        Some(&small) if small < 0x80 => match t {
                            tag::I64 => {
                                B::push(&mut map, name, B::i64(unzigzag(u64::from(small))));
                                pos += 2;
                                continue;
                            }
                            tag::U64 => {
                                B::push(&mut map, name, B::u64(u64::from(small)));
                                pos += 2;
                                continue;
                            }
                            _ => {
                                let len = usize::from(small);
                                if let Some(text) = self.build.quick(pos + 2, len) {
                                    B::push(&mut map, name, B::str(text));
                                    pos += 2 + len;
                                    continue;
                                }
                            }
                        },
                        _ => {}
                    },
                    _ => {}
                }
            }
            self.pos = pos;
            let value = self.any_value(depth)?;
            pos = self.pos;
            B::push(&mut map, name, value);
        }
        self.pos = pos;
        Ok(map)
    }

    /// A header field or name at `pos` when its text lies in the run already checked:
    /// the text and where it ends.
    #[inline(always)]
    fn quick_short(&self, pos: usize, quick: bool) -> Option<(B::Text, usize)> {
        if !quick {
            return None;
        }
        let len = usize::from(*self.buf.get(pos)?);
        let text = self.build.quick(pos + 1, len)?;
        Some((text, pos + 1 + len))
    }

    /// A name, by the general path.
    #[inline(never)]
    fn name(&mut self) -> Step<B::Text> {
        self.short_text(Field::Name)
    }

    /// A value, by the general path.
    #[inline(never)]
    fn any_value(&mut self, depth: usize) -> Step<B::Value> {
        self.value(depth)
    }

    #[cold]
    #[inline(never)]
    fn duplicate(&mut self, name: &B::Text, at: usize) -> Stop {
        let name: &str = name.borrow();
        self.fail(DecodeError::DuplicateName {
            name: name.to_owned(),
            at,
        })
    }

    #[inline]
    fn nested(&mut self, depth: usize, at: usize) -> Step<usize> {
        if depth >= self.max_depth {
            return Err(self.fail(DecodeError::TooDeep {
                max: self.max_depth,
                at,
            }));
        }
        Ok(depth + 1)
    }

    /// One value, with its tag; inlined into the loops that call it (a nested array or
    /// map goes through [`array`](Self::array) or [`values`](Self::values), out of line).
    #[inline(always)]
    fn value(&mut self, depth: usize) -> Step<B::Value> {
        let at = self.pos;
        Ok(match self.u8()? {
            tag::NULL => B::null(),
            tag::FALSE => B::bool(false),
            tag::TRUE => B::bool(true),
            tag::I64 => B::i64(unzigzag(self.varint()?)),
            tag::U64 => B::u64(self.varint()?),
            tag::F64 => {
                let end = self.pos.wrapping_add(8);
                let Some(raw) = self.buf.get(self.pos..end) else {
                    return Err(self.fail(DecodeError::Truncated { at: self.pos }));
                };
                let mut bits = [0u8; 8];
                bits.copy_from_slice(raw);
                self.pos = end;
                B::f64(f64::from_bits(u64::from_be_bytes(bits)))
            }
            tag::STR => {
                let len = self.length()?;
                B::str(self.text(len, Field::Str)?)
            }
            tag::BYTES => {
                // `length` checked it against the bytes left.
                let len = self.length()?;
                let value = self.build.bytes(self.pos, len);
                self.pos += len;
                value
            }
            tag::ARRAY => self.array(depth, at)?,
            tag::MAP => {
                let inner = self.nested(depth, at)?;
                B::map(self.values(inner)?)
            }
            tag => return Err(self.fail(DecodeError::UnknownTag { tag, at })),
        })
    }

    #[inline(never)]
    fn array(&mut self, depth: usize, at: usize) -> Step<B::Value> {
        let inner = self.nested(depth, at)?;
        let count = self.count(1)?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(self.value(inner)?);
        }
        Ok(B::array(items))
    }
}

/// Builds a [`ContainerRef`](crate::ContainerRef): views of the payload.
pub(crate) struct Views<'a> {
    buf: &'a [u8],
    runs: Runs<&'a str>,
}

impl<'a> Views<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Views {
            buf,
            runs: Runs::default(),
        }
    }
}

impl<'a> Build<'a> for Views<'a> {
    type Text = &'a str;
    type Value = ValueRef<'a>;
    type Map = ValuesRef<'a>;

    #[inline(always)]
    fn text(&mut self, at: usize, len: usize) -> Result<&'a str, Utf8Error> {
        let buf = self.buf;
        self.runs.text(
            buf,
            at,
            len,
            |start, end| view_run(buf, start, end),
            |at, len| std::str::from_utf8(buf.get(at..at + len).unwrap_or_default()),
        )
    }

    #[inline(always)]
    fn quick(&self, at: usize, len: usize) -> Option<&'a str> {
        self.runs.in_run(at, len)
    }

    #[inline(always)]
    fn start_run(&mut self, at: usize) -> bool {
        let buf = self.buf;
        self.runs
            .start(buf, at, |start, end| view_run(buf, start, end))
    }

    #[inline(always)]
    fn bytes(&mut self, at: usize, len: usize) -> ValueRef<'a> {
        ValueRef::Bytes(self.buf.get(at..at + len).unwrap_or_default())
    }

    #[inline(always)]
    fn null() -> ValueRef<'a> {
        ValueRef::Null
    }
    #[inline(always)]
    fn bool(b: bool) -> ValueRef<'a> {
        ValueRef::Bool(b)
    }
    #[inline(always)]
    fn i64(n: i64) -> ValueRef<'a> {
        ValueRef::I64(n)
    }
    #[inline(always)]
    fn u64(n: u64) -> ValueRef<'a> {
        ValueRef::U64(n)
    }
    #[inline(always)]
    fn f64(x: f64) -> ValueRef<'a> {
        ValueRef::F64(x)
    }
    #[inline(always)]
    fn str(text: &'a str) -> ValueRef<'a> {
        ValueRef::Str(text)
    }
    fn array(items: Vec<ValueRef<'a>>) -> ValueRef<'a> {
        ValueRef::Array(items)
    }
    fn map(map: ValuesRef<'a>) -> ValueRef<'a> {
        ValueRef::Map(map)
    }
    #[inline(always)]
    fn map_with_capacity(n: usize) -> ValuesRef<'a> {
        ValuesRef::with_capacity(n)
    }
    #[inline(always)]
    fn contains(map: &ValuesRef<'a>, name: &str) -> bool {
        map.entries().iter().any(|(n, _)| same_text(n, name))
    }
    fn add_names(map: &ValuesRef<'a>, set: &mut HashSet<&'a str>) {
        set.extend(map.entries().iter().map(|(n, _)| *n));
    }
    #[inline(always)]
    fn push(map: &mut ValuesRef<'a>, name: &'a str, value: ValueRef<'a>) {
        map.push_checked(name, value);
    }
}

/// `a == b`, names of up to 16 bytes compared as two overlapping words each (no call to
/// `memcmp`: most names are short).
#[inline(always)]
pub(crate) fn same_text(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    if a.len() <= 16 {
        if let (Some(a0), Some(b0), Some(a1), Some(b1)) = (
            a.first_chunk::<8>(),
            b.first_chunk::<8>(),
            a.last_chunk::<8>(),
            b.last_chunk::<8>(),
        ) {
            return a0 == b0 && a1 == b1;
        }
        if let (Some(a0), Some(b0), Some(a1), Some(b1)) = (
            a.first_chunk::<4>(),
            b.first_chunk::<4>(),
            a.last_chunk::<4>(),
            b.last_chunk::<4>(),
        ) {
            return a0 == b0 && a1 == b1;
        }
    }
    a == b
}

/// `buf[start..end]` (ASCII, so UTF-8: never fails; an empty run if it did) as a run.
#[inline(always)]
fn view_run(buf: &[u8], start: usize, end: usize) -> &str {
    simdutf8::basic::from_utf8(buf.get(start..end).unwrap_or_default()).unwrap_or_default()
}

/// `payload[start..end]` (ASCII, so UTF-8: never fails; an empty run if it did) as a run.
#[inline(always)]
fn shared_run(payload: &Bytes, start: usize, end: usize) -> ByteString {
    if start > end || end > payload.len() {
        return ByteString::default();
    }
    ByteString::try_from(payload.slice(start..end)).unwrap_or_default()
}

/// Builds an owned [`Container`](crate::Container): slices of the payload's [`Bytes`],
/// one reference count each.
pub(crate) struct Shared<'a> {
    payload: &'a Bytes,
    runs: Runs<ByteString>,
}

impl<'a> Shared<'a> {
    pub(crate) fn new(payload: &'a Bytes) -> Self {
        Shared {
            payload,
            runs: Runs::default(),
        }
    }
}

impl<'a> Build<'a> for Shared<'a> {
    type Text = ByteString;
    type Value = Value;
    type Map = Values;

    #[inline(always)]
    fn text(&mut self, at: usize, len: usize) -> Result<ByteString, Utf8Error> {
        let payload = self.payload;
        self.runs.text(
            payload,
            at,
            len,
            |start, end| shared_run(payload, start, end),
            |at, len| ByteString::try_from(payload.slice(at..at + len)),
        )
    }

    #[inline(always)]
    fn quick(&self, at: usize, len: usize) -> Option<ByteString> {
        self.runs.in_run(at, len)
    }

    #[inline(always)]
    fn start_run(&mut self, at: usize) -> bool {
        let payload = self.payload;
        self.runs
            .start(payload, at, |start, end| shared_run(payload, start, end))
    }

    #[inline(always)]
    fn bytes(&mut self, at: usize, len: usize) -> Value {
        Value::Bytes(self.payload.slice(at..at + len))
    }

    #[inline(always)]
    fn null() -> Value {
        Value::Null
    }
    #[inline(always)]
    fn bool(b: bool) -> Value {
        Value::Bool(b)
    }
    #[inline(always)]
    fn i64(n: i64) -> Value {
        Value::I64(n)
    }
    #[inline(always)]
    fn u64(n: u64) -> Value {
        Value::U64(n)
    }
    #[inline(always)]
    fn f64(x: f64) -> Value {
        Value::F64(x)
    }
    #[inline(always)]
    fn str(text: ByteString) -> Value {
        Value::Str(text)
    }
    fn array(items: Vec<Value>) -> Value {
        Value::Array(items)
    }
    fn map(map: Values) -> Value {
        Value::Map(map)
    }
    #[inline(always)]
    fn map_with_capacity(n: usize) -> Values {
        Values::with_capacity(n)
    }
    #[inline(always)]
    fn contains(map: &Values, name: &str) -> bool {
        map.entries().iter().any(|(n, _)| **n == *name)
    }
    fn add_names(map: &Values, set: &mut HashSet<ByteString>) {
        set.extend(map.entries().iter().map(|(n, _)| n.clone()));
    }
    #[inline(always)]
    fn push(map: &mut Values, name: ByteString, value: Value) {
        map.push_checked(name, value);
    }
}

/// A run of text: `&str` or [`ByteString`], sliced without checking UTF-8 again.
pub(crate) trait Run: Default {
    /// The text `self[off..off + len]`, if that range is in the run at character
    /// boundaries.
    fn sub(&self, off: usize, len: usize) -> Option<Self>;
    fn len(&self) -> usize;
}

impl Run for &str {
    #[inline(always)]
    fn sub(&self, off: usize, len: usize) -> Option<Self> {
        let run: &str = self;
        run.get(off..off.checked_add(len)?)
    }
    #[inline(always)]
    fn len(&self) -> usize {
        str::len(self)
    }
}

impl Run for ByteString {
    #[inline(always)]
    fn sub(&self, off: usize, len: usize) -> Option<Self> {
        let text = self.get(off..off.checked_add(len)?)?;
        Some(self.slice_ref(text))
    }
    #[inline(always)]
    fn len(&self) -> usize {
        str::len(self)
    }
}

/// UTF-8 checked in runs: from the first text that needs it, the longest stretch of
/// ASCII bytes is found (32 bytes at a time) and taken as text once (for a
/// [`ContainerRef`](crate::ContainerRef), by `simdutf8` from 64 bytes on, `str::from_utf8`
/// below); each text that lies in it is a slice of it. The lengths, tags and small numbers between texts are
/// ASCII, so one run usually covers many texts. A text not inside the run (one with
/// non-ASCII characters, or one that is not UTF-8) is checked by itself, so the answer
/// is always `str::from_utf8`'s on the text. Runs never overlap, so each byte is looked
/// at a bounded number of times: linear in the payload, whatever it holds.
#[derive(Debug, Default)]
pub(crate) struct Runs<R> {
    /// `run` is `payload[start..start + run.len()]`.
    start: usize,
    run: R,
}

impl<R: Run> Runs<R> {
    /// `buf[at..at + len]` as text; the caller has checked that it is in `buf`.
    /// `make(start, end)` makes the run of `buf[start..end]` (ASCII), `alone(at, len)`
    /// checks a text by itself.
    #[inline(always)]
    pub(crate) fn text(
        &mut self,
        buf: &[u8],
        at: usize,
        len: usize,
        make: impl FnOnce(usize, usize) -> R,
        alone: impl FnOnce(usize, usize) -> Result<R, Utf8Error>,
    ) -> Result<R, Utf8Error> {
        if let Some(s) = self.in_run(at, len) {
            return Ok(s);
        }
        if len == 0 {
            return Ok(R::default());
        }
        if at >= self.start + self.run.len() {
            self.new_run(buf, at, make);
            if let Some(s) = self.in_run(at, len) {
                return Ok(s);
            }
        }
        // Not in one run: the text is not ASCII (or straddles an old run); ask directly.
        alone(at, len)
    }

    /// A new run at `at` if `at` is at or past the end of the current one (so runs never
    /// overlap); whether it made one.
    #[inline(always)]
    pub(crate) fn start(
        &mut self,
        buf: &[u8],
        at: usize,
        make: impl FnOnce(usize, usize) -> R,
    ) -> bool {
        // Only at a byte of the payload (a name's length byte may be its last).
        if at < buf.len() && at >= self.start + self.run.len() {
            self.new_run(buf, at, make);
            return true;
        }
        false
    }

    #[inline(always)]
    pub(crate) fn in_run(&self, at: usize, len: usize) -> Option<R> {
        self.run.sub(at.checked_sub(self.start)?, len)
    }

    #[inline(never)]
    fn new_run(&mut self, buf: &[u8], at: usize, make: impl FnOnce(usize, usize) -> R) {
        let end = at + ascii_prefix(buf.get(at..).unwrap_or_default());
        self.start = at;
        self.run = make(at, end);
    }
}

/// How many bytes at the start of `bytes` are ASCII: 32 bytes at a time while they all
/// are, then 8 at a time, the first non-ASCII byte of a word found from its high bits,
/// and the last word (overlapping the ones before) read whole instead of byte by byte.
#[inline]
pub(crate) fn ascii_prefix(bytes: &[u8]) -> usize {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const HIGH2: u128 = 0x8080_8080_8080_8080_8080_8080_8080_8080;
    // The offset of the first byte with its high bit set in a little-endian word.
    let first = |high: u64| high.trailing_zeros() as usize / 8;
    let mut n = 0;
    let mut rest = bytes;
    while let Some((block, tail)) = rest.split_first_chunk::<32>() {
        let lo = block
            .first_chunk::<16>()
            .map_or(0, |b| u128::from_le_bytes(*b));
        let hi = block
            .last_chunk::<16>()
            .map_or(0, |b| u128::from_le_bytes(*b));
        if (lo | hi) & HIGH2 != 0 {
            break;
        }
        n += 32;
        rest = tail;
    }
    while let Some((word, tail)) = rest.split_first_chunk::<8>() {
        let high = u64::from_le_bytes(*word) & HIGH;
        if high != 0 {
            return n + first(high);
        }
        n += 8;
        rest = tail;
    }
    if rest.is_empty() {
        return n;
    }
    match bytes.last_chunk::<8>() {
        // The bytes of the last word before `n` are ASCII: its first high bit is at `n`
        // or after.
        Some(last) => {
            let high = u64::from_le_bytes(*last) & HIGH;
            if high == 0 {
                bytes.len()
            } else {
                bytes.len() - 8 + first(high)
            }
        }
        None => rest
            .iter()
            .position(|b| !b.is_ascii())
            .unwrap_or(rest.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain reading of a varint (PROTOCOL.md section 6), to hold the fast one to.
    fn reference_varint(bytes: &[u8]) -> Result<(u64, usize), DecodeError> {
        let mut n = 0u64;
        for i in 0..10 {
            let Some(&byte) = bytes.get(i) else {
                return Err(DecodeError::Truncated { at: i });
            };
            if i == 9 && byte > 1 {
                return Err(DecodeError::BadVarint { at: 0 });
            }
            n |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if byte == 0 && i > 0 {
                    return Err(DecodeError::BadVarint { at: 0 });
                }
                return Ok((n, i + 1));
            }
        }
        Err(DecodeError::BadVarint { at: 0 })
    }

    fn varint(bytes: &[u8]) -> Result<(u64, usize), DecodeError> {
        let mut c = Cursor {
            buf: bytes,
            pos: 0,
            values_left: 1,
            max_values: 1,
            max_depth: 1,
            build: Views::new(bytes),
            error: None,
        };
        match c.varint() {
            Ok(n) => Ok((n, c.pos)),
            Err(Stop) => Err(c.error.take().unwrap_or(DecodeError::Truncated { at: 0 })),
        }
    }

    #[test]
    fn the_fast_varint_reads_what_the_plain_one_reads() {
        let mut cases: Vec<Vec<u8>> = Vec::new();
        // Every length from 1 to 10 bytes: the smallest and largest number of each
        // length, an overlong form (a final zero), and each cut short; then any tail.
        for len in 1..=10usize {
            for last in [0u8, 1, 2, 0x7f, 0x80] {
                for fill in [0x80u8, 0xff] {
                    let mut v = vec![fill; len - 1];
                    v.push(last);
                    for cut in 0..=v.len() {
                        cases.push(v[..cut].to_vec());
                        let mut tail = v[..cut].to_vec();
                        tail.extend([0x05, 0x80, 0x01]);
                        cases.push(tail);
                    }
                }
            }
        }
        for n in [0u64, 1, 127, 128, 300, 1 << 56, (1 << 56) - 1, u64::MAX] {
            let mut v = Vec::new();
            let mut x = n;
            while x >= 0x80 {
                v.push((x as u8) | 0x80);
                x >>= 7;
            }
            v.push(x as u8);
            assert_eq!(varint(&v), Ok((n, v.len())), "{v:x?}");
            cases.push(v);
        }
        for case in &cases {
            assert_eq!(varint(case), reference_varint(case), "{case:x?}");
        }
    }

    mod quick {
        use proptest::prelude::*;

        use crate::{Container, ContainerRef, Limits, Value, Values};

        use super::QUICK;

        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => "[a-z]{0,9}",
                1 => "[a-zé€]{0,6}",
                1 => "[a-z]{120,140}",
            ]
        }

        fn leaf() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                (-70i64..70).prop_map(Value::I64),
                any::<i64>().prop_map(Value::I64),
                (0u64..140).prop_map(Value::U64),
                any::<u64>().prop_map(Value::U64),
                any::<f64>().prop_map(Value::F64),
                text().prop_map(Value::from),
                prop::collection::vec(any::<u8>(), 0..6).prop_map(|b| Value::from(&b[..])),
            ]
        }

        fn values(depth: u32) -> BoxedStrategy<Values> {
            let value = if depth == 0 {
                leaf().boxed()
            } else {
                prop_oneof![
                    6 => leaf(),
                    1 => prop::collection::vec(leaf(), 0..3).prop_map(Value::Array),
                    1 => values(depth - 1).prop_map(Value::Map),
                ]
                .boxed()
            };
            prop::collection::vec(("[a-z]{0,3}", value), 0..24)
                .prop_map(|entries| {
                    let mut values = Values::new();
                    for (name, value) in entries {
                        let _ = values.insert(name, value);
                    }
                    values
                })
                .boxed()
        }

        /// An encoded container, then maybe damaged: a byte changed, one of its values
        /// (name and all) repeated at the end, or cut short.
        fn payload() -> impl Strategy<Value = Vec<u8>> {
            (
                text(),
                values(2),
                0usize..4,
                any::<prop::sample::Index>(),
                any::<u8>(),
            )
                .prop_map(|(source, values, damage, at, byte)| {
                    let source: String = source.chars().take(20).collect();
                    let header = || Container::builder("m").source(source.clone(), "").build();
                    let (Ok(mut c), Ok(empty)) = (header(), header()) else {
                        return Vec::new();
                    };
                    let len = values.len();
                    let repeated = values.iter().nth(at.index(len.max(1))).map(|(n, v)| {
                        let mut one = Values::new();
                        let _ = one.insert(n, v.clone());
                        one
                    });
                    *c.values_mut() = values;
                    let mut p = c.encode().to_vec();
                    let i = at.index(p.len().max(1));
                    // The header, then the count (one byte below 128), then the values.
                    let head = empty.encode().len() - 1;
                    match (damage, repeated) {
                        (1, _) if i < p.len() => p[i] = byte,
                        (2, Some(one)) if len < 127 => {
                            let mut d = empty.clone();
                            *d.values_mut() = one;
                            let extra = d.encode();
                            p[head] += 1;
                            p.extend_from_slice(&extra[head + 1..]);
                        }
                        (3, _) => p.truncate(i),
                        _ => {}
                    }
                    p
                })
        }

        fn both<T>(quick: bool, f: impl FnOnce() -> T) -> T {
            QUICK.with(|q| q.set(quick));
            let out = f();
            QUICK.with(|q| q.set(true));
            out
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// The tight loop of `Cursor::values` (and `Cursor::short`'s quick text)
            /// answers exactly what the general path answers, on any payload: the same
            /// container, or the same error at the same place.
            #[test]
            fn quick_and_general_paths_agree(p in payload(), limit in 1usize..40) {
                let bytes = bytes::Bytes::from(p.clone());
                for limits in [Limits::DEFAULT, Limits::new(1, limit).unwrap()] {
                    let quick = both(true, || ContainerRef::decode_with(&p, &limits));
                    let general = both(false, || ContainerRef::decode_with(&p, &limits));
                    prop_assert_eq!(&quick, &general);
                    let quick = both(true, || Container::decode_with(&bytes, &limits));
                    let general = both(false, || Container::decode_with(&bytes, &limits));
                    prop_assert_eq!(&quick, &general);
                    // And the view and the owned decode agree with each other.
                    prop_assert_eq!(
                        quick.as_ref().map(|c| c.encode()).ok(),
                        ContainerRef::decode_with(&p, &limits).map(|c| c.to_container().encode()).ok()
                    );
                }
            }

            /// The same on any bytes at all.
            #[test]
            fn quick_and_general_paths_agree_on_any_bytes(
                mut p in prop::collection::vec(any::<u8>(), 0..64),
            ) {
                // Mostly well-formed heads, so that the values loop is reached.
                if p.len() > 7 {
                    p[..7].copy_from_slice(&[1, 0, 0, 0, 0, 0, 3]);
                }
                let quick = both(true, || ContainerRef::decode(&p));
                let general = both(false, || ContainerRef::decode(&p));
                prop_assert_eq!(quick, general);
            }
        }

        #[test]
        fn every_cut_of_a_container_fails_alike_in_both_decodes_and_both_paths() {
            // Cut after the version byte, after a name's length byte, inside a text: a
            // run is never started past the payload's end (a panic in `Bytes::slice`).
            let c = Container::builder("m")
                .source("src", "")
                .value("a", "x")
                .value("bb", 1i64)
                .value("ccc", 1_000_000u64)
                .build()
                .unwrap();
            let p = c.encode();
            for cut in 0..p.len() {
                let part = &p[..cut];
                let shared = bytes::Bytes::copy_from_slice(part);
                for quick in [true, false] {
                    let view = both(quick, || {
                        ContainerRef::decode(part).map(|c| c.to_container())
                    });
                    let owned = both(quick, || Container::decode(&shared));
                    assert!(owned.is_err(), "{cut}");
                    assert_eq!(view, owned, "{cut} {quick}");
                    assert_eq!(owned, both(!quick, || Container::decode(&shared)), "{cut}");
                }
            }
        }

        #[test]
        fn the_generated_payloads_take_the_quick_path_and_the_general_one() {
            // A check on the test itself: its containers hold quick values (a short
            // string) and values only the general path reads (a long string, a long
            // varint, a nested map), and repeated names.
            let c = Container::builder("m")
                .value("a", "x".repeat(130))
                .value("b", 1_000_000i64)
                .value("c", "short")
                .build()
                .unwrap();
            let p = c.encode();
            assert_eq!(
                both(true, || ContainerRef::decode(&p)),
                both(false, || ContainerRef::decode(&p))
            );
            assert_eq!(
                ContainerRef::decode(&p).unwrap().get::<&str>("c").unwrap(),
                "short"
            );
        }
    }

    #[test]
    fn same_text_is_equality() {
        let texts: Vec<String> = (0..40)
            .flat_map(|len| {
                let base: String = "abcdefghijklmnopqrstuvwxyz0123456789ABCD"[..len].into();
                let mut variants = vec![base.clone()];
                // The same length, one byte different at each place.
                for i in 0..len {
                    let mut b = base.clone().into_bytes();
                    b[i] = b'_';
                    variants.push(String::from_utf8(b).unwrap());
                }
                variants
            })
            .collect();
        for a in &texts {
            for b in &texts {
                assert_eq!(same_text(a, b), a == b, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn ascii_prefix_agrees_with_the_plain_count() {
        let plain = |b: &[u8]| b.iter().take_while(|b| b.is_ascii()).count();
        for len in 0..70 {
            let ascii = vec![b'a'; len];
            assert_eq!(ascii_prefix(&ascii), len);
            for at in 0..len {
                let mut b = ascii.clone();
                b[at] = 0xc3;
                assert_eq!(ascii_prefix(&b), plain(&b), "{len} {at}");
                // A second non-ASCII byte after the first changes nothing.
                if let Some(later) = b.get_mut(len - 1) {
                    *later = 0x80;
                }
                assert_eq!(ascii_prefix(&b), plain(&b), "{len} {at}");
            }
        }
    }
}
