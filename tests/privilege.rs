//! Privilege changes (`[[routes.session.privilege]]`): a password change, role elevation
//! or "sudo mode" the app performs in the same app session gets a new sessiongate ID, so
//! an ID anyone copied before the change is worthless after it; with `revoke_others`,
//! the user's other sessions end too. Real sockets, the in-process legacy app.
#![allow(clippy::unwrap_used)]

mod support;

use support::legacy::{holding, login, sg, whoami, LegacyApp};
use support::*;

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

fn config(app: &LegacyApp, revoke_others: bool) -> String {
    format!(
        r#"{ADMIN}
{}
[[routes.session.privilege]]
path = "/sudo"
methods = ["POST"]
success = {{ status = [200], body_contains = "elevated" }}
failure = {{ status = [403] }}
revoke_others = {revoke_others}
"#,
        app.route_config("")
    )
}

async fn sudo(b: &mut Browser, password: &str) -> Reply {
    b.post_form("/sudo", &[("password", password)]).await
}

#[tokio::test]
async fn an_elevation_gets_a_new_id_and_ends_the_users_other_sessions() {
    let app = LegacyApp::start().await;
    let proxy = Proxy::start(&config(&app, true)).await;
    let mut laptop = Browser::new(&proxy);
    let mut phone = Browser::new(&proxy);
    let mut bob = Browser::new(&proxy);
    login(&mut laptop, "alice").await;
    login(&mut phone, "alice").await;
    login(&mut bob, "bob").await;
    let before = sg(&laptop);
    // Someone copied the laptop's ID while alice was an ordinary user.
    let mut copy = holding(&proxy, &before);
    assert_eq!(whoami(&mut copy).await, "alice");

    // A wrong password: the rule's failure, nothing changes.
    assert_eq!(sudo(&mut laptop, "wrong").await.status, 403);
    assert_eq!(sg(&laptop), before);
    assert_eq!(whoami(&mut phone).await, "alice");

    let r = sudo(&mut laptop, "pw-alice").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "elevated"));
    assert_ne!(sg(&laptop), before, "no new ID after the privilege change");
    assert_eq!(whoami(&mut laptop).await, "alice+admin");
    assert_eq!(
        whoami(&mut copy).await,
        "anonymous",
        "the ID copied before the elevation still works"
    );
    assert_eq!(
        whoami(&mut phone).await,
        "anonymous",
        "revoke_others left another of alice's sessions alive"
    );
    assert_eq!(whoami(&mut bob).await, "bob");

    let metrics = admin_get(proxy.admin.unwrap(), "/metrics").await.1;
    assert_eq!(
        metric(
            &metrics,
            "sessiongate_sessions_rotated_total{kind=\"privilege\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&metrics, "sessiongate_sessions_revoked_by_subject_total"),
        1.0
    );
}

#[tokio::test]
async fn without_revoke_others_the_other_sessions_stay() {
    let app = LegacyApp::start().await;
    let proxy = Proxy::start(&config(&app, false)).await;
    let mut laptop = Browser::new(&proxy);
    let mut phone = Browser::new(&proxy);
    login(&mut laptop, "alice").await;
    login(&mut phone, "alice").await;
    let before = sg(&laptop);
    assert_eq!(sudo(&mut laptop, "pw-alice").await.status, 200);
    assert_ne!(sg(&laptop), before);
    assert_eq!(whoami(&mut laptop).await, "alice+admin");
    assert_eq!(whoami(&mut holding(&proxy, &before)).await, "anonymous");
    assert_eq!(whoami(&mut phone).await, "alice");
}

/// The rule reads the user from a form field, but on a signed-in session the user is the
/// one who signed in: mallory naming alice in her own "sudo" form neither becomes alice
/// nor ends alice's sessions.
#[tokio::test]
async fn a_form_field_cannot_name_another_user() {
    let app = LegacyApp::start().await;
    let text = config(&app, true).replace(
        "revoke_others = true",
        "revoke_others = true\nsubject = { form_field = \"username\" }",
    );
    let proxy = Proxy::start(&text).await;
    let mut alice = Browser::new(&proxy);
    let mut mallory = Browser::new(&proxy);
    login(&mut alice, "alice").await;
    login(&mut mallory, "mallory").await;
    let r = mallory
        .post_form(
            "/sudo",
            &[("username", "alice"), ("password", "pw-mallory")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(whoami(&mut mallory).await, "mallory+admin");
    assert_eq!(
        whoami(&mut alice).await,
        "alice",
        "mallory ended alice's session"
    );
    // Revoking mallory finds her elevated session: it is still hers.
    let out = tokio::task::spawn_blocking({
        let admin = proxy.admin.unwrap().to_string();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
                .args(["revoke", "--subject", "mallory", "--admin", &admin])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ended 1 sessions\n");
    assert_eq!(whoami(&mut mallory).await, "anonymous");
}
