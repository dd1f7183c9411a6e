//! `tokengate user list|create|edit|delete`: the admin accounts, through
//! `/api/users` (the admin role only).

use super::connect::{answer, call, request_body};
use super::token_table::columns;
use super::{prompt, Connection, Failure, UserCommand, EXIT_INVALID};
use crate::admin::api::{validate_account_name, CreateUser, CreatedUser, EditUser, UserInfo};
use crate::roles::Role;

/// An account name as the gateway accepts it, checked here too because it
/// goes into a URL path and an HTTP Basic header, where `/`, `?` or `:`
/// would change the request rather than be refused by it.
pub(super) fn check_name(what: &str, name: &str) -> Result<(), Failure> {
    validate_account_name(name).map_err(|e| Failure(EXIT_INVALID, format!("{what} {name:?}: {e}")))
}

pub(super) async fn run(conn: &Connection, cmd: UserCommand) -> Result<(), Failure> {
    match cmd {
        UserCommand::List => list(conn).await,
        UserCommand::Create {
            name,
            role,
            password_stdin,
        } => create(conn, name, role, password_stdin).await,
        UserCommand::Edit {
            name,
            role,
            disable,
            enable,
            password_stdin,
        } => {
            let disabled = if disable {
                Some(true)
            } else {
                enable.then_some(false)
            };
            edit(conn, name, role, disabled, password_stdin).await
        }
        UserCommand::Delete { name } => delete(conn, name).await,
    }
}

/// The new password of `name`: typed at the terminal (twice, since nobody
/// sees it), or the first line of a pipe.
fn new_password(name: &str) -> Result<String, Failure> {
    if !prompt::interactive() {
        return prompt::stdin_line().ok_or_else(|| {
            Failure(
                EXIT_INVALID,
                "--password-stdin: standard input holds no password".into(),
            )
        });
    }
    let invalid = |e: String| Failure(EXIT_INVALID, e);
    let first = prompt::password(&format!("New password for {name}: ")).map_err(invalid)?;
    let again = prompt::password("The same again: ").map_err(invalid)?;
    if first != again {
        return Err(Failure(
            EXIT_INVALID,
            "the two passwords differ; nothing was changed".into(),
        ));
    }
    Ok(first)
}

async fn list(conn: &Connection) -> Result<(), Failure> {
    let bytes = call(conn, "GET", "/api/users", None).await?;
    let users: Vec<UserInfo> = answer(&bytes)?;
    if conn.json {
        println!("{}", String::from_utf8_lossy(&bytes));
    } else {
        print!("{}", table(&users));
    }
    Ok(())
}

async fn create(
    conn: &Connection,
    name: String,
    role: Role,
    password_stdin: bool,
) -> Result<(), Failure> {
    check_name("the name", &name)?;
    let password = password_stdin.then(|| new_password(&name)).transpose()?;
    let body = request_body(&CreateUser {
        name,
        role,
        password,
    })?;
    let bytes = call(conn, "POST", "/api/users", Some(body)).await?;
    let created: CreatedUser = answer(&bytes)?;
    if conn.json {
        println!("{}", String::from_utf8_lossy(&bytes));
        return Ok(());
    }
    let u = &created.user;
    match &created.password {
        // The password alone on stdout, so `P=$(tokengate user create …)`
        // keeps it; the sentence goes to stderr.
        Some(p) => {
            eprintln!(
                "Created user {} ({}). Its generated password is below; copy it now: it cannot be shown again.",
                u.name, u.role
            );
            println!("{p}");
        }
        None => println!("created user {} ({})", u.name, u.role),
    }
    Ok(())
}

async fn edit(
    conn: &Connection,
    name: String,
    role: Option<Role>,
    disabled: Option<bool>,
    password_stdin: bool,
) -> Result<(), Failure> {
    check_name("the name", &name)?;
    let password = password_stdin.then(|| new_password(&name)).transpose()?;
    let edit = EditUser {
        role,
        disabled,
        password,
    };
    if edit == EditUser::default() {
        return Err(Failure(
            EXIT_INVALID,
            "nothing to change: give --role, --disable, --enable or --password-stdin".into(),
        ));
    }
    let bytes = call(
        conn,
        "PATCH",
        &format!("/api/users/{name}"),
        Some(request_body(&edit)?),
    )
    .await?;
    let user: UserInfo = answer(&bytes)?;
    if conn.json {
        println!("{}", String::from_utf8_lossy(&bytes));
    } else {
        print!("{}", table(std::slice::from_ref(&user)));
    }
    Ok(())
}

async fn delete(conn: &Connection, name: String) -> Result<(), Failure> {
    check_name("the name", &name)?;
    call(conn, "DELETE", &format!("/api/users/{name}"), None).await?;
    // 204: no JSON to show, even with --json.
    if !conn.json {
        println!("deleted user {name}");
    }
    Ok(())
}

/// The accounts as a plain-text table for people.
fn table(rows: &[UserInfo]) -> String {
    let header = ["NAME", "ROLE", "SOURCE", "STATUS", "CREATED", "LAST LOGIN"];
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|u| {
            vec![
                u.name.clone(),
                u.role.to_string(),
                u.source.as_str().to_owned(),
                if u.disabled { "disabled" } else { "enabled" }.into(),
                u.created_at.clone(),
                u.last_login_at.clone().unwrap_or_else(|| "never".into()),
            ]
        })
        .collect();
    columns(&header, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names() {
        for ok in ["admin", "dba.team-1", "jo@example.org", &"a".repeat(64)] {
            assert!(check_name("--user", ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a:b", "a b", "é", "x?y", &"a".repeat(65)] {
            let Err(Failure(code, msg)) = check_name("--user", bad) else {
                panic!("{bad:?} accepted");
            };
            assert_eq!(code, EXIT_INVALID);
            assert!(msg.starts_with("--user"), "{msg}");
        }
    }

    #[test]
    fn the_user_table() {
        let rows = [UserInfo {
            name: "jo@example.org".into(),
            role: Role::Creator,
            disabled: true,
            source: crate::admin::api::AccountSource::Oidc,
            created_at: "2026-01-01T00:00:00Z".into(),
            last_login_at: None,
        }];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAME            ROLE"), "{t}");
        assert!(
            lines[1].contains("creator") && lines[1].contains("disabled"),
            "{t}"
        );
        assert!(lines[1].ends_with("never"), "{t}");
    }
}
