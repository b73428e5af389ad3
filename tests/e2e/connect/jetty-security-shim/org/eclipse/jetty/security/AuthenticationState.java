// Part of the Jetty 12 jetty-security API stand-in (tests/e2e/connect/README.md).
package org.eclipse.jetty.security;

import org.eclipse.jetty.server.Request;
import org.eclipse.jetty.server.Response;

/**
 * A request's authentication, as jetty-ee10-servlet's request object asks for it
 * (getUserPrincipal, getAuthType, isUserInRole, login, logout). Without a
 * security handler no request ever has one: these answer "not authenticated".
 */
public interface AuthenticationState extends Request.AuthenticationState {
    static AuthenticationState getAuthenticationState(Request request) {
        Request.AuthenticationState state = Request.getAuthenticationState(request);
        return state instanceof AuthenticationState ? (AuthenticationState) state : null;
    }

    /** The state, never deferred here: only a security handler defers authentication. */
    static AuthenticationState getUndeferredAuthenticationState(Request request) {
        return getAuthenticationState(request);
    }

    /** No login service to check the credentials against: the login fails. */
    static Succeeded login(String username, String password, Request request, Response response) {
        return null;
    }

    /** Nobody is logged in, so there is nobody to log out. */
    static boolean logout(Request request, Response response) {
        return false;
    }

    interface Succeeded extends AuthenticationState {
        String getAuthenticationType();

        UserIdentity getUserIdentity();

        boolean isUserInRole(String role);
    }

    interface Deferred extends AuthenticationState {
    }

    interface ResponseSent extends AuthenticationState {
    }
}
