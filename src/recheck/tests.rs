use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use super::*;
use crate::x509::rules::RuleKind;

struct Ca {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(cn: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    Ca { der: cert.der().clone(), issuer: Issuer::new(params, key) }
}

fn device(ca: &Ca, cn: &str, serial: u64) -> Vec<CertificateDer<'static>> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.serial_number = Some(SerialNumber::from(serial));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().expect("key");
    vec![params.signed_by(&key, &ca.issuer).expect("leaf").der().clone()]
}

fn crl(ca: &Ca, revoked: &[u64]) -> CertificateRevocationListDer<'static> {
    let params = CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2024, 1, 1),
        next_update: rcgen::date_time_ymd(2099, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from(*s),
                revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params.signed_by(&ca.issuer).expect("crl").der().clone()
}

fn verifier(cas: &[&Ca], crls: Vec<CertificateRevocationListDer<'static>>) -> Arc<dyn ClientCertVerifier> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.der.clone()).expect("root");
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

fn settings(spread: Duration) -> RecheckSettings {
    RecheckSettings { spread, ..RecheckSettings::default() }
}

fn refused() -> Option<CloseReason> {
    Some(CloseReason::Revoked)
}

#[tokio::test(start_paused = true)]
async fn a_trust_change_asks_for_a_recheck() {
    let (tx, rx) = watch::channel(());
    let mut standing = Standing::new(&settings(DEFAULT_SPREAD), Some(rx), None);
    tx.send_replace(());
    assert_eq!(standing.next().await, Event::Recheck);
}

#[tokio::test(start_paused = true)]
async fn a_refused_recheck_closes_within_the_spread() {
    let (_tx, rx) = watch::channel(());
    let mut standing = Standing::new(&settings(Duration::from_secs(60)), Some(rx), None);
    let started = Instant::now();
    let delay = standing.rechecked(refused()).expect("a close is scheduled");
    assert!(delay <= Duration::from_secs(60));
    assert_eq!(standing.next().await, Event::Close(CloseReason::Revoked));
    assert!(started.elapsed() <= Duration::from_secs(60));
}

#[test]
fn closes_of_one_change_are_spread_over_the_window() {
    let delays: Vec<Duration> = (0..200).map(|_| share_of(Duration::from_secs(60))).collect();
    assert!(delays.iter().all(|d| *d <= Duration::from_secs(60)));
    assert!(delays.iter().any(|d| *d < Duration::from_secs(20)), "some close early");
    assert!(delays.iter().any(|d| *d > Duration::from_secs(40)), "some close late");
}

#[tokio::test(start_paused = true)]
async fn a_zero_spread_closes_at_once() {
    let mut standing = Standing::new(&settings(Duration::ZERO), None, None);
    assert_eq!(standing.rechecked(refused()), Some(Duration::ZERO));
    let started = Instant::now();
    assert_eq!(standing.next().await, Event::Close(CloseReason::Revoked));
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn trust_restored_before_the_close_cancels_it() {
    let (tx, rx) = watch::channel(());
    let mut standing = Standing::new(&settings(Duration::from_secs(60)), Some(rx), None);
    standing.rechecked(refused());
    assert_eq!(standing.rechecked(None), None);
    let next = tokio::time::timeout(Duration::from_secs(3600), standing.next()).await;
    assert!(next.is_err(), "no close is pending: {next:?}");
    drop(tx);
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64
}

#[tokio::test(start_paused = true)]
async fn an_expiring_certificate_closes_its_connection_just_after_not_after() {
    let mut standing = Standing::new(&settings(DEFAULT_SPREAD), None, Some(unix_now() + 30));
    let started = Instant::now();
    assert_eq!(standing.next().await, Event::Close(CloseReason::Expired));
    assert!(started.elapsed() >= Duration::from_secs(30) && started.elapsed() <= Duration::from_secs(32));
}

#[tokio::test(start_paused = true)]
async fn with_close_at_cert_expiry_off_an_expiring_certificate_stays() {
    let settings = RecheckSettings { close_at_cert_expiry: false, ..RecheckSettings::default() };
    let mut standing = Standing::new(&settings, None, Some(unix_now() + 30));
    assert!(tokio::time::timeout(Duration::from_secs(3600), standing.next()).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn the_lifetime_closes_between_nine_tenths_and_all_of_it() {
    let settings = RecheckSettings { max_lifetime: Some(Duration::from_secs(1000)), ..RecheckSettings::default() };
    let mut standing = Standing::new(&settings, None, Some(unix_now() + 100_000));
    let started = Instant::now();
    assert_eq!(standing.next().await, Event::Close(CloseReason::Lifetime));
    assert!(started.elapsed() >= Duration::from_secs(900) && started.elapsed() <= Duration::from_secs(1000));
}

#[tokio::test(start_paused = true)]
async fn the_earlier_of_expiry_and_lifetime_wins() {
    let settings = RecheckSettings { max_lifetime: Some(Duration::from_secs(1000)), ..RecheckSettings::default() };
    let mut standing = Standing::new(&settings, None, Some(unix_now() + 10));
    assert_eq!(standing.next().await, Event::Close(CloseReason::Expired));
}
