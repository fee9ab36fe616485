//! The API's unit enums (outcomes, stages, reasons, run states, flavors): one set of derives,
//! and wire names derived once from their serde names so that `as_str`, `Display` and the
//! serialized form cannot drift apart.

/// Implements `as_str`, `ALL` order and `Display` for a fieldless enum deriving `Serialize`
/// and `strum::EnumIter`, taking each name from its serde serialization.
#[macro_export]
macro_rules! wire_names {
    ($ty:ty) => {
        impl $ty {
            /// The name on the wire (`#[serde(rename)]` included).
            pub fn as_str(self) -> &'static str {
                static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
                let names = NAMES.get_or_init(|| {
                    <$ty as strum::IntoEnumIterator>::iter()
                        .map(|value| match serde_json::to_value(value) {
                            Ok(serde_json::Value::String(name)) => name,
                            other => {
                                unreachable!("a unit variant serializes as a string: {other:?}")
                            }
                        })
                        .collect()
                });
                // Fieldless enums without explicit discriminants number variants in
                // declaration order, which is the order EnumIter yields them.
                &names[self as usize]
            }

            /// The variant with this wire name.
            pub fn from_wire(name: &str) -> Option<Self> {
                <$ty as strum::IntoEnumIterator>::iter().find(|value| value.as_str() == name)
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// Declares a fieldless API enum with the derives every such enum here shares (serde, schema,
/// ordering, iteration) and its [`wire_names!`].
#[macro_export]
macro_rules! wire_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(
            Clone,
            Copy,
            Debug,
            PartialEq,
            Eq,
            PartialOrd,
            Ord,
            Hash,
            serde::Serialize,
            serde::Deserialize,
            schemars::JsonSchema,
            strum::EnumIter,
        )]
        $vis enum $name {
            $($(#[$vmeta])* $variant),*
        }

        $crate::wire_names!($name);
    };
}
