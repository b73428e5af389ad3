// Part of the Jetty 12 jetty-security API stand-in (tests/e2e/connect/README.md).
package org.eclipse.jetty.security;

import java.security.Principal;

/** An authenticated user; never made here. */
public interface UserIdentity {
    Principal getUserPrincipal();
}
