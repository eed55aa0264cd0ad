use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

fn admission(edit: impl FnOnce(&mut AdmissionSettings)) -> Arc<Admission> {
    let mut settings = AdmissionSettings::default();
    edit(&mut settings);
    Admission::new(settings, 1000)
}

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
}

#[test]
fn without_limits_everyone_is_admitted_and_nothing_is_held() {
    let a = admission(|_| {});
    for i in 0..100 {
        assert!(a.admit_any().is_ok());
        assert!(a.admit_source(v4(i)).expect("admitted").is_none());
    }
    assert_eq!(a.sources(), 0);
}

#[test]
fn the_process_rate_admits_its_burst_then_refuses() {
    let a = admission(|s| {
        s.rate = Some(10);
        s.burst = Some(5);
    });
    let admitted = (0..20).filter(|_| a.admit_any().is_ok()).count();
    assert_eq!(admitted, 5);
    assert_eq!(a.admit_any(), Err(Limited::Rate));
}

#[test]
fn the_n_plus_first_open_connection_of_a_source_is_refused_and_others_are_not() {
    let a = admission(|s| s.per_source = Some(2));
    let first = a.admit_source(v4(1)).expect("1st");
    let _second = a.admit_source(v4(1)).expect("2nd");
    assert_eq!(a.admit_source(v4(1)).err(), Some(Limited::SourceConnections));
    assert!(a.admit_source(v4(2)).is_ok(), "another source is not affected");
    drop(first);
    assert!(a.admit_source(v4(1)).is_ok(), "a closed connection frees its place");
}

#[test]
fn a_source_reconnecting_in_a_loop_is_held_to_its_rate() {
    let a = admission(|s| s.rate_per_source = Some(3));
    let admitted = (0..50).filter(|_| a.admit_source(v4(1)).is_ok()).count();
    assert_eq!(admitted, 3);
    assert_eq!(a.admit_source(v4(1)).err(), Some(Limited::SourceRate));
    assert!(a.admit_source(v4(2)).is_ok());
}

#[test]
fn an_ipv6_source_is_its_slash_64_by_default() {
    let a = admission(|s| s.per_source = Some(1));
    let host = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last));
    let _held = a.admit_source(host(1)).expect("first");
    assert_eq!(a.admit_source(host(2)).err(), Some(Limited::SourceConnections), "same /64");
    assert!(a.admit_source(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1))).is_ok(), "another /64");
}

#[test]
fn an_ipv4_prefix_groups_addresses() {
    let a = admission(|s| {
        s.per_source = Some(1);
        s.prefix_v4 = 24;
    });
    let _held = a.admit_source(v4(1)).expect("first");
    assert!(a.admit_source(v4(200)).is_err(), "same /24");
    let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 9).to_ipv6_mapped());
    assert!(a.admit_source(mapped).is_err(), "an IPv4-mapped address is its IPv4 source");
}

#[test]
fn a_hundred_thousand_sources_keep_the_table_within_its_cap() {
    let a = admission(|s| s.rate_per_source = Some(1));
    for i in 0..100_000u32 {
        let ip = IpAddr::V6(Ipv6Addr::from(u128::from(i) << 64));
        let _ = a.admit_source(ip);
    }
    assert!(a.sources() <= a.cap, "{} sources held, cap {}", a.sources(), a.cap);
}

#[test]
fn sources_with_open_connections_are_never_evicted() {
    let a = admission(|s| s.per_source = Some(1));
    let held: Vec<_> = (0..10u8).map(|i| a.admit_source(v4(i)).expect("admitted")).collect();
    for i in 0..5_000u32 {
        let ip = IpAddr::V6(Ipv6Addr::from(u128::from(i + 1) << 64));
        drop(a.admit_source(ip));
    }
    for i in 0..10u8 {
        assert_eq!(a.admit_source(v4(i)).err(), Some(Limited::SourceConnections), "source {i} still counted");
    }
    drop(held);
}

#[test]
fn the_n_plus_first_connection_of_one_certificate_is_refused() {
    let a = admission(|s| s.per_identity = Some(2));
    let (cloned, other) = ([1u8; 32], [2u8; 32]);
    let first = a.admit_identity(cloned).expect("1st");
    let _second = a.admit_identity(cloned).expect("2nd");
    assert_eq!(a.admit_identity(cloned).err(), Some(2));
    assert!(a.admit_identity(other).is_ok(), "another certificate is not affected");
    drop(first);
    assert!(a.admit_identity(cloned).is_ok());
}

#[test]
fn the_refusal_log_says_at_most_one_line_a_second() {
    let log = RateLimitedLog::default();
    let said = (0..1000).filter(|_| log.may_log().is_some()).count();
    assert_eq!(said, 1);
}
