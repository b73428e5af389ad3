// Part of the Jetty 12 jetty-security API stand-in (tests/e2e/connect/README.md).
package org.eclipse.jetty.security;

/** Associates user identities with threads (servlet run-as roles); never made here. */
public interface IdentityService {
    Association associate(UserIdentity user, RunAsToken runAsToken);

    UserIdentity getSystemUserIdentity();

    RunAsToken newRunAsToken(String roleName);

    interface Association extends AutoCloseable {
        @Override
        void close();
    }

    interface RunAsToken {
    }
}
