use std::sync::Arc;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SerialNumber};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::registry::SCAN;
use super::*;
use crate::crl::tests::{ca, Ca};
use crate::x509::rules::RuleKind;

fn device(ca: &Ca, cn: &str, serial: u64) -> Vec<CertificateDer<'static>> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.serial_number = Some(SerialNumber::from(serial));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().expect("key");
    vec![params.signed_by(&key, &ca.issuer).expect("leaf").der().clone()]
}

fn crl(ca: &Ca, revoked: &[u64]) -> CertificateRevocationListDer<'static> {
    CertificateRevocationListDer::from(crate::crl::tests::crl(ca, 2024, 1, revoked))
}

fn verifier(cas: &[&Ca], crls: Vec<CertificateRevocationListDer<'static>>) -> Arc<dyn ClientCertVerifier> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).expect("pem")).expect("root");
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
        .with_crls(crls)
        .build()
        .expect("verifier")
}

fn rules(cn: &str) -> Rules {
    let mut rules = Rules::default();
    rules.set(RuleKind::Cn, &[cn.to_string()]).expect("glob");
    rules
}

fn reason(v: Result<(), Refused>) -> Option<CloseReason> {
    v.err().map(|r| r.reason)
}

#[test]
fn a_chain_still_trusted_and_admitted_passes() {
    let a = ca("A");
    let chain = device(&a, "dev-1", 1);
    assert_eq!(verdict(&*verifier(&[&a], vec![]), &rules("dev-*"), &chain), Ok(()));
}

#[test]
fn a_serial_on_the_new_crl_is_revoked() {
    let a = ca("A");
    let chain = device(&a, "dev-1", 7);
    assert_eq!(
        reason(verdict(&*verifier(&[&a], vec![crl(&a, &[7])]), &Rules::default(), &chain)),
        Some(CloseReason::Revoked)
    );
    assert_eq!(verdict(&*verifier(&[&a], vec![crl(&a, &[8])]), &Rules::default(), &chain), Ok(()));
}

#[test]
fn a_certificate_of_a_removed_ca_is_untrusted() {
    let (a, b) = (ca("A"), ca("B"));
    let chain = device(&a, "dev-1", 1);
    assert_eq!(reason(verdict(&*verifier(&[&b], vec![]), &Rules::default(), &chain)), Some(CloseReason::Untrusted));
}

#[test]
fn a_certificate_the_narrowed_rules_exclude_is_not_allowed() {
    let a = ca("A");
    let chain = device(&a, "dev-1", 1);
    assert_eq!(reason(verdict(&*verifier(&[&a], vec![]), &rules("other-*"), &chain)), Some(CloseReason::NotAllowed));
}

#[test]
fn without_a_certificate_or_client_auth_there_is_nothing_to_recheck() {
    let a = ca("A");
    assert_eq!(verdict(&*verifier(&[&a], vec![]), &rules("x"), &[]), Ok(()));
    let none = WebPkiClientVerifier::no_client_auth();
    assert_eq!(verdict(&*none, &rules("x"), &device(&a, "dev-1", 1)), Ok(()));
}

fn settings() -> RecheckSettings {
    RecheckSettings::default()
}

/// A registry with its timer running (until the token is dropped... cancelled).
fn registry() -> (Arc<Registry>, tokio_util::sync::DropGuard) {
    let registry = Arc::new(Registry::default());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(registry.clone().run_timer(stop.clone()));
    (registry, stop.drop_guard())
}

async fn next(standing: &mut Standing) -> Event {
    next_with(standing, Duration::ZERO).await
}

async fn next_with(standing: &mut Standing, spread: Duration) -> Event {
    std::future::poll_fn(|cx| standing.poll_event(cx, spread)).await
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64
}

/// A certificate valid for another year: no close of its own in these tests' time.
fn a_year() -> Option<i64> {
    Some(unix_now() + 365 * 24 * 3600)
}

#[tokio::test(start_paused = true)]
async fn a_trust_change_asks_for_a_recheck() {
    let (registry, _timer) = registry();
    let mut standing = Standing::new(&settings(), Some(registry.register()), a_year());
    registry.recheck_all();
    assert_eq!(next(&mut standing).await, Event::Recheck);
}

#[tokio::test(start_paused = true)]
async fn a_change_between_registration_and_the_first_wait_is_not_missed() {
    let (registry, _timer) = registry();
    let entry = registry.register();
    registry.recheck_all();
    let mut standing = Standing::new(&settings(), Some(entry), a_year());
    assert_eq!(next(&mut standing).await, Event::Recheck);
}

#[tokio::test(start_paused = true)]
async fn the_recheck_comes_within_the_spread() {
    let (registry, _timer) = registry();
    let mut standing = Standing::new(&settings(), Some(registry.register()), a_year());
    registry.recheck_all();
    let started = Instant::now();
    assert_eq!(next_with(&mut standing, Duration::from_secs(60)).await, Event::Recheck);
    assert!(started.elapsed() <= Duration::from_secs(60) + SCAN);
}

#[tokio::test(start_paused = true)]
async fn a_second_change_while_a_recheck_is_pending_does_not_postpone_it() {
    let (registry, _timer) = registry();
    let mut standing = Standing::new(&settings(), Some(registry.register()), a_year());
    let started = Instant::now();
    registry.recheck_all();
    let spread = Duration::from_secs(60);
    let first = tokio::time::timeout(Duration::from_millis(1), next_with(&mut standing, spread)).await;
    if first.is_ok() {
        return; // its share of the spread was under a millisecond: nothing left to postpone
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    registry.recheck_all();
    assert_eq!(next_with(&mut standing, spread).await, Event::Recheck);
    assert!(started.elapsed() <= spread + SCAN, "{:?}", started.elapsed());
    let again = tokio::time::timeout(Duration::from_secs(3600), next_with(&mut standing, spread)).await;
    assert!(again.is_err(), "one re-check for the two changes: {again:?}");
}

#[test]
fn rechecks_of_one_change_are_spread_over_the_window() {
    let delays: Vec<Duration> = (0..200).map(|_| share_of(Duration::from_secs(60))).collect();
    assert!(delays.iter().all(|d| *d <= Duration::from_secs(60)));
    assert!(delays.iter().any(|d| *d < Duration::from_secs(20)), "some early");
    assert!(delays.iter().any(|d| *d > Duration::from_secs(40)), "some late");
}

#[tokio::test(start_paused = true)]
async fn without_a_change_there_is_no_recheck() {
    let (registry, _timer) = registry();
    let mut standing = Standing::new(&settings(), Some(registry.register()), a_year());
    let event = tokio::time::timeout(Duration::from_secs(3600), next(&mut standing)).await;
    assert!(event.is_err(), "{event:?}");
}

#[tokio::test(start_paused = true)]
async fn an_expiring_certificate_closes_its_connection_just_after_not_after() {
    let (registry, _timer) = registry();
    let mut standing = Standing::new(&settings(), Some(registry.register()), Some(unix_now() + 30));
    let started = Instant::now();
    assert_eq!(next(&mut standing).await, Event::Close(CloseReason::Expired));
    assert!(started.elapsed() >= Duration::from_secs(30) && started.elapsed() <= Duration::from_secs(32));
}

#[tokio::test(start_paused = true)]
async fn with_close_at_cert_expiry_off_an_expiring_certificate_stays() {
    let (registry, _timer) = registry();
    let settings = RecheckSettings { close_at_cert_expiry: false, ..RecheckSettings::default() };
    let mut standing = Standing::new(&settings, Some(registry.register()), Some(unix_now() + 30));
    assert!(tokio::time::timeout(Duration::from_secs(3600), next(&mut standing)).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn the_lifetime_closes_between_nine_tenths_and_all_of_it() {
    let (registry, _timer) = registry();
    let settings = RecheckSettings { max_lifetime: Some(Duration::from_secs(1000)), ..RecheckSettings::default() };
    let mut standing = Standing::new(&settings, Some(registry.register()), a_year());
    let started = Instant::now();
    assert_eq!(next(&mut standing).await, Event::Close(CloseReason::Lifetime));
    assert!(started.elapsed() >= Duration::from_secs(900) && started.elapsed() <= Duration::from_secs(1000) + SCAN);
}

#[tokio::test(start_paused = true)]
async fn the_earlier_of_expiry_and_lifetime_wins() {
    let (registry, _timer) = registry();
    let settings = RecheckSettings { max_lifetime: Some(Duration::from_secs(1000)), ..RecheckSettings::default() };
    let mut standing = Standing::new(&settings, Some(registry.register()), Some(unix_now() + 10));
    assert_eq!(next(&mut standing).await, Event::Close(CloseReason::Expired));
}

#[tokio::test(start_paused = true)]
async fn a_connection_without_certificate_or_lifetime_is_not_kept_in_the_registry() {
    let (registry, _timer) = registry();
    let standing = Standing::new(&settings(), Some(registry.register()), None);
    assert_eq!(registry.len(), 0);
    drop(standing);
    let watched = Standing::new(&settings(), Some(registry.register()), a_year());
    assert_eq!(registry.len(), 1);
    drop(watched);
    assert_eq!(registry.len(), 0, "a closed connection leaves nothing behind");
}

#[tokio::test(start_paused = true)]
async fn many_deadlines_are_met_by_one_scanning_task() {
    let (registry, _timer) = registry();
    let started = Instant::now();
    let mut closes = Vec::new();
    for secs in [50u64, 10, 30] {
        let settings = RecheckSettings { max_lifetime: Some(Duration::from_secs(secs)), ..RecheckSettings::default() };
        let mut standing = Standing::new(&settings, Some(registry.register()), a_year());
        closes.push(tokio::spawn(async move {
            next(&mut standing).await;
            (secs, started.elapsed())
        }));
    }
    for close in closes {
        let (secs, elapsed) = close.await.expect("join");
        assert!(elapsed >= Duration::from_secs(secs) * 9 / 10, "{secs}s lifetime met at {elapsed:?}");
        assert!(elapsed <= Duration::from_secs(secs) + SCAN, "{secs}s lifetime met at {elapsed:?}");
    }
}
