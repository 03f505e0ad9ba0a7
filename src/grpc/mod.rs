//! gRPC translation. [`reflect`]: the gRPC server reflection client behind `frontdesk proto pull`.

pub mod reflect;
