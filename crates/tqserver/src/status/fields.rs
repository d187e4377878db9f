//! A status page as the list of its fields, in the order its struct declares
//! them: the one walk that the text, XML, HTML and OpenMetrics renderers
//! share. The JSON page is the same struct through serde_json.
//!
//! This is a small serde `Serializer` that knows structs, lists, strings,
//! numbers and booleans, which is all a status page holds.

use std::fmt;

use serde::Serialize;
use serde::ser::{self, Impossible};

/// A page's fields, named as its JSON names them.
pub type Fields = Vec<(&'static str, Cell)>;

/// One field's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Text(String),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Bool(bool),
    /// An absent optional value.
    Null,
    /// A struct inside the page.
    Struct(Fields),
    /// A list (the processes of a pool).
    List(Vec<Cell>),
}

impl fmt::Display for Cell {
    /// The value as text shows it; a struct or list shows nothing (its
    /// renderer lays it out).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(text) => f.write_str(text),
            Self::Unsigned(n) => write!(f, "{n}"),
            Self::Signed(n) => write!(f, "{n}"),
            Self::Float(x) => write!(f, "{x}"),
            Self::Bool(b) => write!(f, "{b}"),
            Self::Null => f.write_str("-"),
            Self::Struct(_) | Self::List(_) => Ok(()),
        }
    }
}

/// `value`'s fields. Panics only if a status page type holds something
/// other than structs, lists, strings, numbers and booleans (a programming
/// error the renderers' unit tests would show).
pub fn fields<T: Serialize>(value: &T) -> Fields {
    match value.serialize(CellSerializer) {
        Ok(Cell::Struct(fields)) => fields,
        Ok(other) => panic!("a status page is a struct, not {other:?}"),
        Err(err) => panic!("a status page type cannot be listed: {err}"),
    }
}

#[derive(Debug)]
pub struct Unsupported(String);

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "status pages hold no {}", self.0)
    }
}

impl std::error::Error for Unsupported {}

impl ser::Error for Unsupported {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

fn unsupported<T>(what: &str) -> Result<T, Unsupported> {
    Err(Unsupported(what.to_owned()))
}

struct CellSerializer;

pub struct StructCells(Fields);

pub struct ListCells(Vec<Cell>);

impl ser::Serializer for CellSerializer {
    type Ok = Cell;
    type Error = Unsupported;
    type SerializeSeq = ListCells;
    type SerializeTuple = Impossible<Cell, Unsupported>;
    type SerializeTupleStruct = Impossible<Cell, Unsupported>;
    type SerializeTupleVariant = Impossible<Cell, Unsupported>;
    type SerializeMap = Impossible<Cell, Unsupported>;
    type SerializeStruct = StructCells;
    type SerializeStructVariant = Impossible<Cell, Unsupported>;

    fn serialize_bool(self, v: bool) -> Result<Cell, Unsupported> {
        Ok(Cell::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Cell, Unsupported> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<Cell, Unsupported> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<Cell, Unsupported> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<Cell, Unsupported> {
        Ok(Cell::Signed(v))
    }
    fn serialize_u8(self, v: u8) -> Result<Cell, Unsupported> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<Cell, Unsupported> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<Cell, Unsupported> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<Cell, Unsupported> {
        Ok(Cell::Unsigned(v))
    }
    fn serialize_f32(self, v: f32) -> Result<Cell, Unsupported> {
        self.serialize_f64(v.into())
    }
    fn serialize_f64(self, v: f64) -> Result<Cell, Unsupported> {
        Ok(Cell::Float(v))
    }
    fn serialize_char(self, v: char) -> Result<Cell, Unsupported> {
        Ok(Cell::Text(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Cell, Unsupported> {
        Ok(Cell::Text(v.to_owned()))
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Cell, Unsupported> {
        unsupported("bytes")
    }
    fn serialize_none(self) -> Result<Cell, Unsupported> {
        Ok(Cell::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Cell, Unsupported> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Cell, Unsupported> {
        Ok(Cell::Null)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Cell, Unsupported> {
        Ok(Cell::Null)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Cell, Unsupported> {
        Ok(Cell::Text(variant.to_owned()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Cell, Unsupported> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Cell, Unsupported> {
        unsupported("enum variants with data")
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<ListCells, Unsupported> {
        Ok(ListCells(Vec::with_capacity(len.unwrap_or(0))))
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
        unsupported("tuples")
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Unsupported> {
        unsupported("tuple structs")
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        unsupported("enum variants with data")
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        // Also what `#[serde(flatten)]` asks for: flattened pages are for
        // JSON only.
        unsupported("maps")
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<StructCells, Unsupported> {
        Ok(StructCells(Vec::with_capacity(len)))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        unsupported("enum variants with data")
    }
}

impl ser::SerializeStruct for StructCells {
    type Ok = Cell;
    type Error = Unsupported;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        name: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        self.0.push((name, value.serialize(CellSerializer)?));
        Ok(())
    }

    fn end(self) -> Result<Cell, Unsupported> {
        Ok(Cell::Struct(self.0))
    }
}

impl ser::SerializeSeq for ListCells {
    type Ok = Cell;
    type Error = Unsupported;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.0.push(value.serialize(CellSerializer)?);
        Ok(())
    }

    fn end(self) -> Result<Cell, Unsupported> {
        Ok(Cell::List(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Inner {
        #[serde(rename = "a b")]
        a_b: u32,
    }

    #[derive(Serialize)]
    struct Page {
        name: &'static str,
        ratio: f64,
        on: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        absent: Option<u8>,
        list: Vec<Inner>,
    }

    #[test]
    fn fields_keep_the_declared_order_and_renames() {
        let page = Page {
            name: "x",
            ratio: 0.5,
            on: true,
            skipped: None,
            absent: None,
            list: vec![Inner { a_b: 7 }],
        };
        assert_eq!(
            fields(&page),
            vec![
                ("name", Cell::Text("x".into())),
                ("ratio", Cell::Float(0.5)),
                ("on", Cell::Bool(true)),
                ("absent", Cell::Null),
                (
                    "list",
                    Cell::List(vec![Cell::Struct(vec![("a b", Cell::Unsigned(7))])])
                ),
            ]
        );
        assert_eq!(Cell::Float(1.25).to_string(), "1.25");
        assert_eq!(Cell::Null.to_string(), "-");
    }
}
