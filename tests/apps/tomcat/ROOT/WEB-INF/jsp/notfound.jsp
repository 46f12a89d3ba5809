<%@ page contentType="text/plain; charset=UTF-8" trimDirectiveWhitespaces="true" %>
<% response.setStatus(404); out.print("Not found\n"); %>
