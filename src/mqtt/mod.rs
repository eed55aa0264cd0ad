//! MQTT, as little as a proxy needs: the first packet (the CONNECT) read and edited byte-exactly, and
//! the CONNACKs that refuse a client in its own protocol version.

pub mod connect;
