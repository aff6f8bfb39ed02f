//! JSON bytes in and out: the one-pass decoder of event documents, the compact writer the
//! outputs use, and the eight-bytes-at-a-time string scan both build on. It knows nothing of
//! events; the decoder hands members to an [`ObjectSink`] that the event's field store implements.

pub mod decode;
pub mod scan;
pub mod write;

pub use decode::{decode_object, DecodeError, ObjectSink};
pub use write::FieldJson;
