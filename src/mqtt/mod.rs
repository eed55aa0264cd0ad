//! MQTT, as little as a proxy needs: [`connect`] reads the first packet (the CONNECT) and edits it
//! byte-exactly; [`connack`] holds the CONNACKs that refuse a client in its own protocol version.

pub mod connack;
pub mod connect;
mod edit;
