//! Who may call what on the gRPC port: a tokens file (`tokens.rs`), the
//! role each RPC needs (`roles.rs`), and the layer in front of every route
//! that checks them (`layer.rs`).
mod layer;
mod roles;
mod tokens;

pub use layer::AuthLayer;
pub use roles::{required_role, Role};
pub use tokens::{TokenTable, TokensFile};
