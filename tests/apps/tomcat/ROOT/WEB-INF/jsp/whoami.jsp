<%@ page contentType="text/plain; charset=UTF-8" trimDirectiveWhitespaces="true" %>
<%
  if (!"GET".equals(request.getMethod()) && !"HEAD".equals(request.getMethod())) { response.sendError(405); return; }
  String user = (String) session.getAttribute("user");
  out.print(user == null ? "anonymous" : user);
%>
